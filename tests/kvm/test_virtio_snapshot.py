"""Virtio devices in snapshots: a guest from guests/virtio/ paused mid-use
(requests in flight included), snapshotted, and restored in a new process
(`pyvmm run --restore`) goes on working: the disk guest's reads and writes
give the right data and leave the image as an uninterrupted run does, the
entropy guest still gets random bytes, the console guest's output goes on
and host input typed before the pause reaches it. Also: the in-process
checkpoint and reset with virtio devices, the devices in config.json
(a disk's path editable), and damaged virtio state refused with one
`pyvmm: error:` line."""

import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from pyvmm import guests
from pyvmm.config import VmConfig
from pyvmm.machine import Machine
from pyvmm.testing.virtio_kvm import expected_after_blk_guest, pattern_image
from pyvmm.virtio_options import DiskSpec, RngSpec

CONSOLE_INPUT = b"hello, console."


def pyvmm(*args, timeout=120):
    return subprocess.run([sys.executable, "-m", "pyvmm", *args], stdin=subprocess.DEVNULL, capture_output=True,
                          timeout=timeout, check=False)


def lines(output):
    """The lines every run prints alike ("~ " lines differ by design: spurious interrupts)."""
    return [line for line in output.decode(errors="replace").splitlines() if not line.startswith("~ ")]


GUESTS = {"blk": "virtio-blk.bin", "rng": "virtio-rng.bin", "console": "virtio-console.bin"}


def config_for(kind, tmp_path, exit_path="python"):
    devices = {"blk": {"disks": [DiskSpec(str(pattern_image(tmp_path / "disk.img")))]},
               "rng": {"rng": RngSpec()}, "console": {"console": "virtio"}}[kind]
    return VmConfig(kernel=guests.path(GUESTS[kind]), serial="buffer", timeout=60, exit_path=exit_path, **devices)


def start(machine, kind):
    if kind == "console":            # typed ahead: waits in the device until the driver takes it
        machine.virtio.console_input(CONSOLE_INPUT)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """Each guest's uninterrupted run: its lines and how many exits it makes."""
    runs = {}
    for kind in GUESTS:
        with Machine(config_for(kind, tmp_path_factory.mktemp(kind))) as machine:
            exits = []
            machine.add_hook(exits.append)
            start(machine, kind)
            result = machine.run()
            assert result.status == 1, machine.serial_output
            runs[kind] = (lines(machine.serial_output), len(exits))
    return runs


def snapshot_at_exit(machine, directory, at):
    """Runs `machine` (Python exit path) until its `at`th exit, snapshots it
    there and shuts it down; True when it was snapshotted."""
    count, asked, taken = [0], threading.Event(), []

    def hook(_event):
        count[0] += 1
        if count[0] == at:
            machine.request_pause()
            asked.set()

    def take():
        if asked.wait(60) and machine.wait_paused(30):
            machine.snapshot(directory)
            taken.append(True)
        machine.shutdown()
    taker = threading.Thread(target=take)
    taker.start()                    # here: vCPU threads start no thread
    machine.add_hook(hook)
    try:
        result = machine.run()
    finally:
        asked.set()
        taker.join(60)
    assert taken and result.reason == "shutdown", result
    return machine.serial_output


@pytest.mark.parametrize("kind", sorted(GUESTS))
@settings(max_examples=3, deadline=None, suppress_health_check=list(HealthCheck))
@given(fraction=st.floats(0.02, 0.95))
def test_paused_mid_use_and_restored_in_a_new_process_it_goes_on(reference, tmp_path_factory, kind, fraction):
    expected, exits = reference[kind]
    tmp_path = tmp_path_factory.mktemp(kind)
    directory = str(tmp_path / "vm")
    config = config_for(kind, tmp_path)
    with Machine(config) as machine:
        start(machine, kind)
        before = snapshot_at_exit(machine, directory, max(1, int(exits * fraction)))
    state = json.load(open(os.path.join(directory, "state.json")))["state"]
    transports = [saved for name, saved in state["devices"].items() if name.startswith("virtio-")
                  and "empty" not in name]
    assert len(transports) == 1 and set(transports[0]) >= {"queues", "negotiated", "status", "device"}
    restored = pyvmm("run", "--restore", directory, "--timeout", "60")
    assert restored.returncode == 1, restored.stderr          # debug-exit 0: the guest's checks passed
    assert restored.stderr == b""
    assert lines(before + restored.stdout) == expected
    if kind == "blk":
        image = (tmp_path / "disk.img").read_bytes()
        assert image == expected_after_blk_guest(pattern_image(tmp_path / "pattern.img").read_bytes())


@pytest.mark.parametrize("kind", sorted(GUESTS))
def test_paused_on_the_fast_path_and_restored(reference, tmp_path, kind):
    """The fast path: notifications come through ioeventfds, the pause when
    the guest has printed a third of its output, wherever its devices are."""
    expected, _exits = reference[kind]
    directory = str(tmp_path / "vm")
    with Machine(config_for(kind, tmp_path, exit_path="fast")) as machine:
        start(machine, kind)
        taken = []

        def take():
            while len(machine.serial_output) < 300 and not machine.stop.requested:
                time.sleep(0.001)
            if machine.pause():
                machine.snapshot(directory)
                taken.append(True)
            machine.shutdown()
        taker = threading.Thread(target=take)
        taker.start()
        result = machine.run()
        taker.join(60)
        before = machine.serial_output
    assert taken and result.reason == "shutdown", result
    restored = pyvmm("run", "--restore", directory, "--timeout", "60")
    assert restored.returncode == 1 and restored.stderr == b"", restored.stderr
    assert lines(before + restored.stdout) == expected


def used_rings(machine):
    """{address: bytes} of the used ring of every ready queue of the virtio devices."""
    from pyvmm.devices.virtio.mmio import MmioTransport
    found = {}
    for transport in machine.devices.stateful().values():
        if isinstance(transport, MmioTransport):
            for addr, length in transport.written_areas():
                found[addr] = machine.memory.read(addr, length)
    return found


def test_a_checkpoint_with_virtio_devices_resets_them_and_their_rings(reference, tmp_path):
    """rng: checkpoint once a queue is ready, run on until the device has
    used buffers, reset, run to the end: the used ring (a page the guest only
    reads, which KVM's dirty log does not see written) is back as it was,
    and the output is the uninterrupted run's."""
    expected, exits = reference["rng"]
    with Machine(config_for("rng", tmp_path)) as machine:
        count, failures, at_checkpoint = [0], [], {}
        asked = {name: threading.Event() for name in ("checkpoint", "reset")}
        done = {name: threading.Event() for name in ("checkpoint", "reset")}

        def hook(_event):
            count[0] += 1
            if not asked["checkpoint"].is_set():
                if count[0] >= exits // 3 and used_rings(machine):
                    machine.request_pause()
                    asked["checkpoint"].set()
            elif done["checkpoint"].is_set() and not asked["reset"].is_set():
                rings = used_rings(machine)
                if rings and rings != at_checkpoint:
                    machine.request_pause()
                    asked["reset"].set()

        def control():
            try:
                assert asked["checkpoint"].wait(60) and machine.wait_paused(30)
                checkpoint = machine.checkpoint()
                at_checkpoint.update(used_rings(machine))
                done["checkpoint"].set()
                machine.resume()
                assert asked["reset"].wait(60) and machine.wait_paused(30)
                machine.reset(checkpoint)
                assert used_rings(machine) == at_checkpoint
                done["reset"].set()
                machine.resume()
            except BaseException as error:       # reported by the test below
                failures.append(error)
                machine.shutdown()
        controller = threading.Thread(target=control)
        controller.start()
        machine.add_hook(hook)
        result = machine.run()
        controller.join(60)
        assert not failures, failures
        assert done["reset"].is_set()
        assert result.status == 1, machine.serial_output
        assert lines(machine.serial_output) == expected


# --- the devices in config.json, and damaged virtio state ---------------------------------

@pytest.fixture(scope="module")
def blk_snapshot(reference, tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("blk-snapshot")
    directory = str(tmp_path / "vm")
    with Machine(config_for("blk", tmp_path)) as machine:
        before = snapshot_at_exit(machine, directory, reference["blk"][1] // 2)
    return directory, tmp_path / "disk.img", before


def copy_of(blk_snapshot, tmp_path):
    directory, image, before = blk_snapshot
    shutil.copytree(directory, tmp_path / "vm")
    shutil.copy(image, tmp_path / "disk.img")
    edit_config(str(tmp_path / "vm"), lambda config: config["disks"][0].update(path=str(tmp_path / "disk.img")))
    return str(tmp_path / "vm"), before


def edit_config(directory, change):
    path = os.path.join(directory, "config.json")
    config = json.load(open(path))
    change(config)
    with open(path, "w") as f:
        json.dump(config, f, indent=2)


def rewrite_state(directory, change):
    import hashlib
    path = os.path.join(directory, "state.json")
    document = json.load(open(path))
    change(document["state"])
    body = json.dumps(document["state"], sort_keys=True, separators=(",", ":"))
    document["checksum"] = "sha256:" + hashlib.sha256(body.encode()).hexdigest()
    with open(path, "w") as f:
        json.dump(document, f)


def blk_transport(state):
    [name] = [name for name in state["devices"] if name.startswith("virtio-blk")]
    return state["devices"][name]


def error_line(run):
    assert run.returncode == 2, run
    errors = run.stderr.decode().splitlines()
    assert len(errors) == 1 and errors[0].startswith("pyvmm: error: "), run.stderr
    assert b"Traceback" not in run.stderr and run.stdout == b""
    return errors[0]


def test_the_config_names_the_devices_and_a_disk_may_move(blk_snapshot, tmp_path, reference):
    directory, before = copy_of(blk_snapshot, tmp_path)
    config = json.load(open(os.path.join(directory, "config.json")))
    assert config["disks"] == [{"path": str(tmp_path / "disk.img"), "readonly": False, "id": None,
                                "rate_limit": None}]
    assert config["console"] == "off" and config["rng"] is None and config["nets"] == []
    restored = pyvmm("run", "--restore", directory, "--timeout", "60")
    assert restored.returncode == 1, restored.stderr
    assert lines(before + restored.stdout) == reference["blk"][0]
    # The moved copy got the rest of the guest's writes; the original was left where the pause was.
    assert (tmp_path / "disk.img").read_bytes() == expected_after_blk_guest(
        pattern_image(tmp_path / "pattern.img").read_bytes())


def set_queue(**fields):
    return lambda state: blk_transport(state)["queues"][0].update(fields)


@pytest.mark.parametrize("damage, message", [
    (set_queue(num=4096), "queue 0: num: 4096 entries"),
    (set_queue(num=24), "num: 24 entries"),
    (set_queue(device=1 << 40), "outside guest RAM"),
    (set_queue(used_idx=3), "in flight"),
    (lambda state: blk_transport(state).update(device_id=4), "device_id: a device of type 4"),
    (lambda state: blk_transport(state).update(negotiated=1), "negotiated"),
    (lambda state: blk_transport(state)["device"].update(sectors=7), "sectors"),
    (lambda state: blk_transport(state).update(queues=[]), "queues"),
], ids=["too-large", "not-power-of-two", "outside-ram", "in-flight", "device-type", "features", "disk-size",
        "no-queues"])
def test_damaged_virtio_state_is_one_error_line(blk_snapshot, tmp_path, damage, message):
    directory, _before = copy_of(blk_snapshot, tmp_path)
    rewrite_state(directory, damage)
    image = (tmp_path / "disk.img").read_bytes()
    line = error_line(pyvmm("run", "--restore", directory))
    assert "device state is damaged" in line and re.search(message, line), line
    assert (tmp_path / "disk.img").read_bytes() == image


@pytest.mark.parametrize("change, message", [
    (lambda config: config["disks"][0].update(path="/nonexistent/disk.img"), "/nonexistent/disk.img"),
    (lambda config: config.update(disks=[]), "devices do not match"),
    (lambda config: config["disks"][0].update(readonly="yes"), "wrong type"),
    (lambda config: config.update(rng={"src": "/dev/urandom"}), "devices do not match"),
    (lambda config: config.update(nets=[{"tap": "bad/name", "mac": "52:54:00:00:00:01", "id": None,
                                         "rx": None, "tx": None}]), "not a network interface name"),
], ids=["missing-disk", "no-disk", "bad-type", "extra-device", "bad-tap"])
def test_a_config_that_cannot_match_is_one_error_line(blk_snapshot, tmp_path, change, message):
    directory, _before = copy_of(blk_snapshot, tmp_path)
    edit_config(directory, change)
    line = error_line(pyvmm("run", "--restore", directory))
    assert message in line, line


@pytest.mark.parametrize("option", [["--disk", "path=x.img"], ["--rng"], ["--console", "virtio"],
                                    ["--net", "tap=tap0"]])
def test_virtio_options_are_refused_with_restore(blk_snapshot, option):
    line = error_line(pyvmm("run", "--restore", blk_snapshot[0], *option))
    assert f"{option[0]} cannot be given" in line


# --- the network device: a TAP named in the config, or one made for the run ---------------

def remote(socket_path, *command):
    run = pyvmm("remote", "--api-socket", socket_path, *command, timeout=60)
    assert run.returncode == 0, run
    return run


def ping_until_answered(pinger, seq, payload, seconds=20):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        answer = pinger.ping(seq, payload, timeout=1)
        if answer is not None:
            return answer
    return None


class Flood:
    """UDP datagrams to a port the guest does not serve, 200 a second, from
    a thread: frames keep arriving while the VM is paused, snapshotted and
    restored."""

    def __init__(self, ns, address):
        from pyvmm.testing.netns import UdpClient
        self.client = UdpClient(ns)
        self.client.sock.setblocking(False)
        self.address, self.sent = address, 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._send)
        self.thread.start()

    def _send(self):
        while not self.stop.is_set():
            try:
                self.client.sock.sendto(bytes(64 + self.sent % 1400), (self.address, 5000))
                self.sent += 1
            except OSError:
                pass
            self.stop.wait(0.005)

    def close(self):
        self.stop.set()
        self.thread.join()
        self.client.close()


def snapshot_serving_guest(ns, tmp_path, net_option, on_ready=None):
    """Runs the network guest in `ns`, has it answer a ping and a UDP echo,
    then pauses, snapshots and shuts it down through the API while frames
    keep arriving; returns (snapshot directory, its output, its stderr)."""
    from pyvmm.testing.netns import GUEST_ADDRESS, MAC, GuestProcess, Pinger, UdpClient
    directory, socket_path = str(tmp_path / "vm"), str(tmp_path / "api.sock")
    guest = GuestProcess(ns, [sys.executable, "-m", "pyvmm", "run", guests.path("virtio-net.bin"), "--net",
                              net_option, "--api-socket", socket_path, "--timeout", "120"])
    flood = None
    try:
        assert guest.wait_for(b"net ready", 60), guest.output
        if on_ready is not None:
            on_ready(guest)
        pinger, client = Pinger(ns, GUEST_ADDRESS), UdpClient(ns, 40000)
        try:
            assert ping_until_answered(pinger, 1, b"before") == b"before"
            assert client.request((GUEST_ADDRESS, 7), b"echo before") == b"echo before"
        finally:
            pinger.close()
            client.close()
        flood = Flood(ns, GUEST_ADDRESS)
        time.sleep(0.2)
        remote(socket_path, "pause")
        info = json.loads(remote(socket_path, "info").stdout)       # checked against the API document
        assert [net["mac"] for net in info["config"]["nets"]] == [MAC]
        remote(socket_path, "snapshot", directory)
        remote(socket_path, "shutdown")
        assert guest.finish(60) == 0
    finally:
        if flood is not None:
            flood.close()
        if guest.process.poll() is None:
            guest.finish(5)
    return directory, bytes(guest.output), guest.errors


def restore_and_talk(ns, directory, on_started=None, before_quit=None):
    """Restores the snapshot in a new process in `ns`; it must answer pings
    and UDP echoes, then "quit". Returns (status, output, stderr)."""
    from pyvmm.testing.netns import GUEST_ADDRESS, GuestProcess, Pinger, UdpClient
    guest = GuestProcess(ns, [sys.executable, "-m", "pyvmm", "run", "--restore", directory, "--timeout", "60",
                              "--stats", "json"])
    flood = Flood(ns, GUEST_ADDRESS)              # frames arrive from the restore on
    try:
        if on_started is not None:
            on_started(guest)
        pinger, client = Pinger(ns, GUEST_ADDRESS), UdpClient(ns, 40000)
        try:
            assert ping_until_answered(pinger, 2, b"after the restore") == b"after the restore", guest.output
            assert client.request((GUEST_ADDRESS, 7), b"x" * 3000) == b"x" * 3000     # merged buffers
            if before_quit is not None:
                before_quit()
            assert client.request((GUEST_ADDRESS, 9), b"quit") == b"bye"
        finally:
            pinger.close()
            client.close()
    finally:
        flood.close()
        status = guest.finish(60)
    return status, bytes(guest.output), guest.errors


@pytest.mark.tap
def test_a_restored_network_guest_keeps_its_tap_and_answers(tmp_path):
    from pyvmm.testing.netns import HOST_ADDRESS, MAC, NetNamespace
    with NetNamespace() as ns:
        ns.add_tap("tap0", f"{HOST_ADDRESS}/24", mtu=9000)
        directory, before, _errors = snapshot_serving_guest(ns, tmp_path, f"tap=tap0,mac={MAC}")
        config = json.load(open(os.path.join(directory, "config.json")))
        assert config["nets"] == [{"tap": "tap0", "mac": MAC, "id": None, "rx": None, "tx": None}]
        state = json.load(open(os.path.join(directory, "state.json")))["state"]
        [net] = [saved for name, saved in state["devices"].items() if name.startswith("virtio-net")]
        assert net["device"]["mac"] == MAC.replace(":", "") and net["device"]["link_up"]
        assert all(queue["ready"] for queue in net["queues"])
        status, after, errors = restore_and_talk(ns, directory)
    assert status == 1, (after, errors)
    output = lines(before + after)
    assert output.count("net ready ip 10.0.2.15") == 1          # the driver did not start again
    assert "icmp echo replies 2, udp echoes 2" in output          # the guest's counts span both processes
    counters = json.loads(errors.decode().strip().splitlines()[-1])["devices"]["net0"]
    assert counters["tx_packets"] >= 3 and counters["rx_dropped"] == 0


@pytest.mark.tap
def test_a_tap_made_for_the_run_is_made_again_with_the_same_mac(tmp_path):
    """A TAP made for the run went with its process: the restore makes a
    new one (named on stderr), and the guest keeps its MAC and its driver."""
    from pyvmm.testing.netns import HOST_ADDRESS, MAC, NetNamespace

    def address_the_new_tap(_guest):
        deadline, found = time.monotonic() + 30, []
        while not found and time.monotonic() < deadline:
            found = re.findall(r"^\d+: (pyvmmtap\d+)", ns.run(["ip", "-o", "link"]).stdout, re.M)
            time.sleep(0.05)
        assert len(found) == 1, found
        ns.run(["sysctl", "-q", "-w", f"net.ipv6.conf.{found[0]}.disable_ipv6=1"])
        ns.run(["ip", "link", "set", found[0], "mtu", "9000"])     # the 3000-byte echo in one frame
        ns.run(["ip", "addr", "add", f"{HOST_ADDRESS}/24", "dev", found[0]])
        names.append(found[0])

    names = []
    with NetNamespace() as ns:
        directory, before, first_errors = snapshot_serving_guest(ns, tmp_path, f"mac={MAC}", address_the_new_tap)
        assert json.load(open(os.path.join(directory, "config.json")))["nets"][0]["tap"] is None
        neighbours = []
        status, after, errors = restore_and_talk(
            ns, directory, address_the_new_tap,
            lambda: neighbours.append(ns.run(["ip", "neigh", "show", "dev", names[1]]).stdout))
        links = ns.run(["ip", "-o", "link"]).stdout
    assert status == 1, (after, errors)
    assert len(names) == 2 and all(name.startswith("pyvmmtap") for name in names)
    assert MAC in neighbours[0]                                   # the guest answered ARP with its MAC
    assert f"TAP device {names[1]}, made for this run".encode() in errors
    assert "pyvmmtap" not in links                                # gone with the process
    output = lines(before + after)
    assert output.count("net ready ip 10.0.2.15") == 1
    assert "icmp echo replies 2, udp echoes 2" in output
