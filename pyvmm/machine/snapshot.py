"""Snapshots: a paused machine written to a directory, and read back in
another process.

    DIR/config.json   the machine's configuration, indented JSON a person may
                      edit (the kernel and other paths are for information:
                      guest memory already holds what was loaded; the virtio
                      devices' disks and TAPs are opened again from it)
    DIR/state.json    {"format": "pyvmm-snapshot", "version": 1, "checksum":
                      "sha256:...", "state": {...}}: every vCPU and the VM's
                      in-kernel devices (pyvmm/kvm/state.py), every device
                      (pyvmm/devices/state.py), the memory layout and how the
                      kernel was booted; the checksum covers "state"
    DIR/memory        guest RAM, its regions one after the other, as a sparse
                      file: runs of zero pages are holes, never written

Device workers are held (DeviceManager.held) while the state is captured
and the memory written, and while a restore puts the state back: no virtio
request is in flight, and nothing writes guest memory meanwhile.

A snapshot is refused when its format, version, checksum, layout or memory
size is not what this pyvmm writes (SnapshotError, one line for the user),
before anything large is read or allocated. The memory's contents are not
checksummed (as Firecracker's and Cloud Hypervisor's are not): only its size
is checked. Files are created with mode 0600 (guest memory may hold secrets)
and appear under their names only once complete (state.json last), and a
directory that already holds a snapshot is never written over.
"""

import errno
import hashlib
import json
import os
import stat

from ..arch.x86_64 import layout
from ..config import ConfigError, VmConfig
from ..devices.state import DeviceStateError
from ..kvm import KvmError
from ..kvm.state import VcpuState, VmState, save_vcpu, save_vm

FORMAT = "pyvmm-snapshot"
VERSION = 1
CONFIG_FILE, STATE_FILE, MEMORY_FILE = "config.json", "state.json", "memory"
MAX_CONFIG_BYTES = 1 << 20
MAX_STATE_BYTES = 256 << 20
WRITE_CHUNK = 64 << 20
# The configuration fields a snapshot keeps (the run-time ones, serial,
# timeout, trace, stats, exit path and gdb, belong to the process that restores).
CONFIG_FIELDS = ("kernel", "memory", "cpus", "cmdline", "raw_mode", "load_addr", "entry", "modules", "initrd",
                 "masked_features", "devices")
# The virtio devices (pyvmm.virtio_options.to_plain: the disks' paths and the
# network devices' TAPs editable); absent from snapshots of machines made
# before virtio devices could be saved, which had none. A restored machine
# opens their files and TAP devices again.
VIRTIO_FIELDS = ("console", "rng", "disks", "nets")
NO_VIRTIO = {"console": "off", "rng": None, "disks": [], "nets": []}


class SnapshotError(Exception):
    """A snapshot that cannot be written or read back; the message is for the user."""


class Snapshot:
    """A snapshot read from a directory: its config and state, checked as
    far as they go without a machine, and where its memory is."""

    def __init__(self, directory, config, state):
        self.directory = directory
        self.config = config
        self.state = state
        self.memory_path = os.path.join(directory, MEMORY_FILE)


# --- the machine's state ------------------------------------------------------------

def capture(machine):
    """The state of a machine that is not running (paused, or not started)."""
    devices = machine.devices.save_state()
    return {
        "boot": {"format": machine.boot.format, "mode": machine.boot.mode, "entry": machine.boot.entry},
        "memory": {"regions": [[region.guest_addr, region.size] for region in machine.memory.regions]},
        "vcpus": [save_vcpu(vcpu) for vcpu in machine.vcpus],
        "vm": save_vm(machine.vm),
        "devices": devices,
    }


class MachineState:
    """A captured state decoded and checked against a machine, ready to be
    put back into it (any number of times)."""

    def __init__(self, machine, state):
        _keys(state, ("boot", "memory", "vcpus", "vm", "devices"), "state")
        if not isinstance(state["vcpus"], list) or len(state["vcpus"]) != len(machine.vcpus):
            raise SnapshotError(f"the snapshot holds {_count(state['vcpus'])} vCPUs, the machine has "
                                f"{len(machine.vcpus)}")
        try:
            self.vcpus = [VcpuState(vcpu, saved, f"vcpus[{index}]")
                          for index, (vcpu, saved) in enumerate(zip(machine.vcpus, state["vcpus"]))]
            self.vm = VmState(state["vm"])
        except ValueError as error:
            raise SnapshotError(f"the snapshot's KVM state is damaged: {error}") from None
        self.devices = state["devices"]

    def apply(self, machine, cpuid=True, stage=False):
        """Devices first (they drive their interrupt lines to the saved levels),
        then the PIT and interrupt controllers, the vCPUs (whose LAPICs thus end
        as saved, whatever the lines delivered meanwhile), the KVM clock last.
        stage: registers, special registers and events may go through kvm_run
        (VcpuState.restore)."""
        try:
            machine.devices.restore_state(self.devices, changed_only=stage)
        except DeviceStateError as error:
            raise SnapshotError(f"the snapshot's device state is damaged: {error}") from None
        try:
            self.vm.restore(machine.vm, clock=False)
            for vcpu, saved in zip(machine.vcpus, self.vcpus):
                saved.restore(vcpu, cpuid=cpuid, stage=stage)
            machine.vm.set_clock(self.vm.clock)
        except KvmError as error:
            raise SnapshotError(f"KVM refused the snapshot's state: {error}") from None


def boot_of(state):
    """(format, mode, entry) of how the snapshot's kernel was booted."""
    boot = state.get("boot") if isinstance(state, dict) else None
    if not isinstance(boot, dict) or not isinstance(boot.get("format"), str) or \
            not isinstance(boot.get("mode"), str) or not isinstance(boot.get("entry"), int):
        raise SnapshotError("the snapshot's state is damaged: boot")
    return boot["format"], boot["mode"], boot["entry"]


# --- the configuration ------------------------------------------------------------

def config_to_plain(config, device_specs=(), virtio=None):
    """config.json's contents; `virtio`: the virtio devices' part
    (VirtioSlots.plain_config), None for a machine without any."""
    plain = {field: getattr(config, field, None) for field in CONFIG_FIELDS if field != "devices"}
    plain["masked_features"] = sorted(config.masked_features)
    plain["modules"] = list(config.modules)
    plain["devices"] = list(device_specs)
    plain.update(NO_VIRTIO if virtio is None else virtio)
    return plain


def config_from_plain(plain, where):
    """(VmConfig, device specs) from config.json's contents."""
    virtio = {}
    if isinstance(plain, dict):
        virtio = {key: plain[key] for key in VIRTIO_FIELDS if key in plain}
        plain = {key: value for key, value in plain.items() if key not in VIRTIO_FIELDS}
    _keys(plain, CONFIG_FIELDS, where)
    kinds = {"kernel": (str, type(None)), "memory": int, "cpus": int, "cmdline": str,
             "raw_mode": (str, type(None)), "load_addr": (int, type(None)), "entry": (int, type(None)),
             "modules": list, "initrd": (str, type(None)), "masked_features": list, "devices": list}
    for field, kind in kinds.items():
        value = plain[field]
        if isinstance(value, bool) or not isinstance(value, kind):
            raise SnapshotError(f"{where}: {field} has the wrong type ({type(value).__name__})")
    for field in ("modules", "masked_features", "devices"):
        if not all(isinstance(item, str) for item in plain[field]):
            raise SnapshotError(f"{where}: {field} must be a list of strings")
    options = {}
    if any(virtio.get(key, off) != off for key, off in NO_VIRTIO.items()):
        from ..virtio_options import from_plain      # only a machine with virtio devices needs it
        try:
            options = from_plain(virtio, where)
        except ConfigError as error:
            raise SnapshotError(str(error)) from None
    config = VmConfig(**{field: plain[field] for field in CONFIG_FIELDS if field != "devices"}, **options)
    return config, list(plain["devices"])


# --- writing ----------------------------------------------------------------------

def write(directory, config_plain, state, memory):
    """Writes a snapshot into `directory` (made if missing; its parent must
    exist). SnapshotError if it cannot, and nothing already there is touched."""
    try:
        os.mkdir(directory, 0o700)
    except FileExistsError:
        if not os.path.isdir(directory):
            raise SnapshotError(f"cannot write a snapshot to {directory}: it is not a directory") from None
    except OSError as error:
        raise SnapshotError(f"cannot write a snapshot to {directory}: {error.strerror}") from None
    taken = [name for name in (CONFIG_FILE, STATE_FILE, MEMORY_FILE) if os.path.lexists(os.path.join(directory, name))]
    if taken:
        raise SnapshotError(f"{directory} already holds a snapshot ({', '.join(taken)}): "
                            "choose an empty or new directory")
    body = json.dumps(state, sort_keys=True, separators=(",", ":"))
    document = json.dumps({"format": FORMAT, "version": VERSION, "checksum": _checksum(body)},
                          separators=(",", ":"))[:-1] + ',"state":' + body + "}\n"
    config_text = json.dumps(config_plain, indent=2) + "\n"
    written = []
    try:
        for name, produce in ((MEMORY_FILE, lambda fd: _write_memory(fd, memory)),
                              (CONFIG_FILE, lambda fd: _write_all(fd, config_text.encode())),
                              (STATE_FILE, lambda fd: _write_all(fd, document.encode()))):
            temporary = os.path.join(directory, f".{name}.partial")
            fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
            written.append(temporary)
            try:
                produce(fd)
            finally:
                os.close(fd)
            os.link(temporary, os.path.join(directory, name))     # fails rather than replace a file
            written.append(os.path.join(directory, name))
            os.unlink(temporary)
            written.remove(temporary)
    except OSError as error:
        for path in written:
            try:
                os.unlink(path)
            except OSError:
                pass
        raise SnapshotError(f"cannot write the snapshot in {directory}: "
                            f"{error.strerror or error}") from None


def _write_all(fd, data):
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _write_memory(fd, memory):
    """Each region's non-zero pages at its place in the file; the rest stays a hole."""
    position = 0
    for region in memory.regions:
        for offset, length in region.nonzero_runs():
            for start in range(offset, offset + length, WRITE_CHUNK):
                chunk = region.view[start:min(start + WRITE_CHUNK, offset + length)]
                done = 0
                while done < len(chunk):
                    done += os.pwrite(fd, chunk[done:], position + start + done)
        position += region.size
    os.ftruncate(fd, position)


def _checksum(body):
    return "sha256:" + hashlib.sha256(body.encode()).hexdigest()


# --- reading ----------------------------------------------------------------------

def read(directory):
    """The Snapshot in `directory`, checked as far as it can be without a machine."""
    if not os.path.isdir(directory):
        raise SnapshotError(f"{directory} is not a snapshot directory (no such directory)")
    config_path, state_path = (os.path.join(directory, name) for name in (CONFIG_FILE, STATE_FILE))
    document = _read_json(state_path, MAX_STATE_BYTES)
    if not isinstance(document, dict) or document.get("format") != FORMAT:
        raise SnapshotError(f"{state_path} is not a pyvmm snapshot")
    if document.get("version") != VERSION:
        raise SnapshotError(f"{state_path} is a pyvmm snapshot of version {document.get('version')!r}; "
                            f"this pyvmm reads version {VERSION}")
    state = document.get("state")
    body = json.dumps(state, sort_keys=True, separators=(",", ":"))
    if document.get("checksum") != _checksum(body):
        raise SnapshotError(f"{state_path} is damaged: its checksum does not match")
    config = _read_json(config_path, MAX_CONFIG_BYTES)
    snapshot = Snapshot(directory, config, state)
    _check_layout(snapshot)
    return snapshot


def _open_regular(path):
    """(fd, fstat) of a regular file opened for reading; SnapshotError otherwise."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as error:
        raise SnapshotError(f"cannot read {path}: {error.strerror}") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise SnapshotError(f"{path} is not a regular file")
    except BaseException as error:
        os.close(fd)
        if isinstance(error, OSError):
            raise SnapshotError(f"cannot read {path}: {error.strerror}") from None
        raise
    return fd, info


def _read_json(path, limit):
    fd, info = _open_regular(path)
    try:
        if info.st_size > limit:
            raise SnapshotError(f"{path} is too large ({info.st_size} bytes, at most {limit})")
        with os.fdopen(os.dup(fd), "rb") as stream:
            data = stream.read(limit + 1)
    except OSError as error:
        raise SnapshotError(f"cannot read {path}: {error.strerror}") from None
    finally:
        os.close(fd)
    try:
        return json.loads(data)
    except (ValueError, RecursionError) as error:
        raise SnapshotError(f"{path} is damaged: {error}") from None


def _check_layout(snapshot):
    state = snapshot.state
    _keys(state, ("boot", "memory", "vcpus", "vm", "devices"), "state")
    memory = state["memory"]
    regions = memory.get("regions") if isinstance(memory, dict) else None
    if not isinstance(regions, list) or not all(
            isinstance(region, list) and len(region) == 2 and all(isinstance(x, int) and not isinstance(x, bool)
                                                                  for x in region) for region in regions):
        raise SnapshotError("the snapshot's state is damaged: memory regions")
    boot_of(state)


def machine_config(snapshot, overrides):
    """The VmConfig a snapshot's machine is rebuilt from (config.json, with
    the run-time `overrides`), checked against the state's layout, and the
    specs of its command-line devices."""
    where = os.path.join(snapshot.directory, CONFIG_FILE)
    config, device_specs = config_from_plain(snapshot.config, where)
    for field, value in overrides.items():
        setattr(config, field, value)
    try:
        config.validate()
        if config.has_virtio:           # a missing disk or TAP, before anything is built
            from ..virtio_options import check
            check(config)
    except ConfigError as error:
        raise SnapshotError(f"{where}: {error}") from None
    regions = [list(region) for region in layout.ram_ranges(config.memory)]
    if regions != snapshot.state["memory"]["regions"]:
        raise SnapshotError(f"{where}: memory {config.memory} does not match the snapshot's memory layout "
                            f"{snapshot.state['memory']['regions']}")
    if not isinstance(snapshot.state["vcpus"], list) or len(snapshot.state["vcpus"]) != config.cpus:
        raise SnapshotError(f"{where}: cpus {config.cpus} does not match the snapshot's "
                            f"{_count(snapshot.state['vcpus'])} vCPUs")
    return config, device_specs


def load_memory(memory, path):
    """Reads the memory file into guest RAM: only its data, holes are skipped
    (the fresh RAM is zero there). The file must be exactly RAM's size."""
    fd, info = _open_regular(path)
    try:
        if info.st_size != memory.size:
            raise SnapshotError(f"{path} is damaged: {info.st_size} bytes, the snapshot's memory is {memory.size}")
        position = 0
        for region in memory.regions:
            for start, end in _data_extents(fd, position, position + region.size):
                for piece in range(start, end, WRITE_CHUNK):
                    target = region.view[piece - position:min(end, piece + WRITE_CHUNK) - position]
                    done = 0
                    while done < len(target):
                        got = os.preadv(fd, [target[done:]], piece + done)
                        if got <= 0:
                            raise SnapshotError(f"{path} ended early")
                        done += got
            position += region.size
    except OSError as error:
        raise SnapshotError(f"cannot read {path}: {error.strerror}") from None
    finally:
        os.close(fd)


def _data_extents(fd, start, end):
    """[(start, end)] of the file's data between start and end (SEEK_DATA/SEEK_HOLE)."""
    extents, position = [], start
    while position < end:
        try:
            data = os.lseek(fd, position, os.SEEK_DATA)
        except OSError as error:
            if error.errno == errno.ENXIO:          # only a hole from here on
                break
            if error.errno == errno.EINVAL:         # no SEEK_DATA here: read it all
                return [(start, end)]
            raise
        if data >= end:
            break
        hole = min(os.lseek(fd, data, os.SEEK_HOLE), end)
        extents.append((data, hole))
        position = hole
    return extents


def _keys(value, keys, where):
    if not isinstance(value, dict):
        raise SnapshotError(f"the snapshot's {where} is damaged: not an object")
    missing = [key for key in keys if key not in value]
    unknown = [key for key in value if key not in keys]
    if missing or unknown:
        raise SnapshotError(f"the snapshot's {where} is damaged: "
                            + "; ".join(part for part in (missing and f"missing {', '.join(missing)}",
                                                          unknown and f"unknown {', '.join(map(str, unknown))}")
                                        if part))


def _count(value):
    return len(value) if isinstance(value, list) else "no"
