"""The virtio guests under QEMU's microvm (TCG) and under pyvmm: the same lines.

Each guest in guests/virtio/ discovers the transports (ACPI DSDT and a slot
scan), drives one device through initialisation, requests, interrupts and
resets, and prints what it saw. Lines starting with "~ " hold what differs
by design (QEMU wires slot 23 to IRQ 47 of a second IOAPIC, pyvmm to IRQ 23
of its only one; the vendor IDs; QEMU also offers VIRTIO_F_RING_RESET;
kvm_pvm's spurious interrupts): every other line must be identical, and the
"~" lines are checked for each host.
"""

import os
import re
import sys

import pytest

from pyvmm import guests
from pyvmm.testing.virtio_kvm import expected_after_blk_guest, pattern_image

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from qemu_runner import microvm_command, pyvmm_virtio_command, run  # noqa: E402

pytestmark = [pytest.mark.qemu, pytest.mark.kvm]

PYVMM_HOST_LINES = {
    r"~ dsdt virtio-mmio uid (\d+) irq (\d+)": lambda uid, irq: uid == irq,
    r"~ slot \d+ vendor 0x4d565950": None,
    r"~ \w+ irq (\d+)": lambda irq: 16 <= int(irq) <= 23,
}
QEMU_HOST_LINES = {
    r"~ dsdt virtio-mmio uid (\d+) irq (\d+)": lambda uid, irq: int(irq) == 24 + int(uid),
    r"~ slot \d+ vendor 0x554d4551": None,
    r"~ \w+ irq (\d+)": lambda irq: 40 <= int(irq) <= 47,
}


def split(output, device_lines=False):
    """(lines, host lines); device_lines: drop what a console itself sent
    (its "+" lines, and bytes QEMU sends from a broken chain)."""
    lines = output.decode("utf-8", "replace").splitlines()
    if device_lines:
        lines = [line for line in lines if line != "+" and line.isprintable()]
    return [line for line in lines if not line.startswith("~ ")], [
        line for line in lines if line.startswith("~ ")]


def check_host_lines(lines, rules, extra=()):
    for line in lines:
        for pattern, check in list(rules.items()) + list(extra):
            match = re.fullmatch(pattern, line)
            if match:
                assert check is None or check(*match.groups()), line
                break


def compare(guest, devices, exit_path="fast", host_extra=(), cmdline=None, stdin=b"", prompt=None,
            device_lines=False, qemu_devices=None):
    """Runs `guest` under both; qemu_devices: QEMU's own (other disk files), default `devices`."""
    kernel = guests.path(guest)
    qemu = run(microvm_command(kernel, qemu_devices or devices, cmdline=cmdline), stdin, prompt,
               timeout=60)
    pyvmm = run(pyvmm_virtio_command(kernel, devices, cmdline=cmdline, exit_path=exit_path),
                stdin, prompt, timeout=90)
    qemu_lines, qemu_host = split(qemu.output, device_lines)
    pyvmm_lines, pyvmm_host = split(pyvmm.output, device_lines)
    assert not any(line.startswith("FAIL") for line in pyvmm_lines), pyvmm
    assert pyvmm_lines == qemu_lines, (pyvmm, qemu)
    assert (pyvmm.status, qemu.status) == (1, 1), (pyvmm, qemu)
    check_host_lines(pyvmm_host, PYVMM_HOST_LINES, host_extra)
    check_host_lines(qemu_host, QEMU_HOST_LINES, host_extra)
    return pyvmm_lines, pyvmm_host, qemu_host


@pytest.mark.parametrize("exit_path", ["fast", "python"])
def test_entropy_device_matches_qemu(exit_path):
    lines, pyvmm_host, qemu_host = compare("virtio-rng.bin", [("rng",)], exit_path)
    assert "slot 23: entropy (id 4) version 2, in the dsdt" in lines
    assert "slots: 1 devices, 23 empty (magic, version 2, id 0), 0 without a transport" in lines
    assert "event_idx past it: used 64, random bytes yes, interrupts 0, status 0x0" in lines
    assert lines[-1] == "rng done"
    assert "~ offered 0x0000000130000000" in pyvmm_host          # VERSION_1, INDIRECT, EVENT_IDX
    assert "~ offered 0x0000010130000000" in qemu_host           # and RING_RESET


# virtio-bad.bin: where QEMU and the specification part ways, pyvmm follows
# the specification (DEVICE_NEEDS_RESET, FEATURES_OK refused) and QEMU takes
# whatever the driver writes. Both sets are pinned here.
PYVMM_MISBEHAVIOUR = [
    "~ DRIVER before ACKNOWLEDGE: status 0x40",
    "~ FEATURES_OK before DRIVER: status 0x41",
    "~ DRIVER cleared without a reset: status 0x43",
    "~ a feature not offered: status 0x3",
    "~ no VERSION_1: status 0x3",
    "~ a queue ready before FEATURES_OK: status 0x43 ready 0",
    "~ a queue of 3 entries: status 0x4b ready 0",
    "~ a queue of 2048 entries: status 0x4b ready 0",
    "~ a descriptor table outside RAM: status 0x4b ready 0",
    "~ a used ring outside RAM: status 0x4b ready 0",
    "~ an indirect table inside an indirect table: status 0x4f, used 0, configuration change yes",
    "~ a buffer outside RAM: status 0x4f, used 0, configuration change yes",
]
QEMU_MISBEHAVIOUR = [
    "~ DRIVER before ACKNOWLEDGE: status 0x2",
    "~ FEATURES_OK before DRIVER: status 0x9",
    "~ DRIVER cleared without a reset: status 0x1",
    "~ a feature not offered: status 0xb",
    "~ no VERSION_1: status 0xb",
    "~ a queue ready before FEATURES_OK: status 0x3 ready 1",
    "~ a queue of 3 entries: status 0xb ready 1",
    "~ a queue of 2048 entries: status 0xb ready 1",
    "~ a descriptor table outside RAM: status 0xb ready 1",
    "~ a used ring outside RAM: status 0xb ready 1",
]


def misbehaviour(host_lines):
    return [line for line in host_lines
            if not re.match(r"~ (dsdt|slot|\w+ irq|spurious)", line)]


def check_misbehaving_driver(devices, cmdline, exit_path="fast", also=()):
    console = devices[0][0] == "console"
    lines, pyvmm_host, qemu_host = compare("virtio-bad.bin", devices, exit_path, cmdline=cmdline,
                                           device_lines=console)
    assert misbehaviour(pyvmm_host) == PYVMM_MISBEHAVIOUR + list(also)
    assert misbehaviour(qemu_host)[:len(QEMU_MISBEHAVIOUR)] == QEMU_MISBEHAVIOUR
    # Both recover from every broken rule after a reset.
    goods = [line for line in lines if line.startswith("  then a good request")]
    assert len(goods) == 14 and len(set(goods)) == 1 and "used 1" in goods[0] and "interrupt 1" in goods[0]
    rules = ["a head past the table", "a next past the table", "a descriptor loop",
             "readable after writable", "an empty indirect table"]
    for rule in rules + ([] if also else ["an available index that jumps"]):
        assert f"{rule}: status 0x4f, used 0, configuration change yes" in lines
    assert lines[-1] == "bad done"
    return lines


@pytest.mark.parametrize("exit_path", ["fast", "python"])
def test_misbehaving_driver_on_the_entropy_device(exit_path):
    check_misbehaving_driver([("rng",)], "device=4", exit_path)


@pytest.mark.parametrize("exit_path", ["fast", "python"])
def test_console_matches_qemu(exit_path):
    lines, pyvmm_host, qemu_host = compare("virtio-console.bin", [("console",)], exit_path,
                                           host_extra=[(r"~ in \d+ buffers", None)],
                                           stdin=b"hello, console.", prompt=b"console ready for input")
    assert "hvc!" in lines and "hvc: a chain of three" in lines and lines.count("hvc: again") == 3
    assert "received 15 bytes: hello, console." in lines
    assert "offered version_1 1 indirect 1 event_idx 1 device 0x4" in lines    # EMERG_WRITE
    assert lines[-1] == "console done"


def test_misbehaving_driver_on_the_console():
    # QEMU's console takes the stale entries of a jumping index as requests.
    check_misbehaving_driver([("console",)], "device=3", also=[
        "~ an available index that jumps: status 0x4f, used 0, configuration change yes"])


@pytest.mark.parametrize("exit_path", ["fast", "python"])
def test_block_device_matches_qemu(tmp_path, exit_path):
    qemu_image = pattern_image(tmp_path / "qemu.img")
    pyvmm_image = pattern_image(tmp_path / "pyvmm.img")
    original = pyvmm_image.read_bytes()
    kernel = guests.path("virtio-blk.bin")
    qemu = run(microvm_command(kernel, [("disk", str(qemu_image), False, "disk0")]), timeout=60)
    pyvmm = run(pyvmm_virtio_command(kernel, [("disk", str(pyvmm_image), False, "disk0")],
                                     exit_path=exit_path), timeout=90)
    pyvmm_lines, pyvmm_host = split(pyvmm.output)
    qemu_lines, _ = split(qemu.output)
    assert pyvmm_lines == qemu_lines, (pyvmm, qemu)
    assert (pyvmm.status, qemu.status) == (1, 1)
    for line in ('get_id: status 0 used 21 id "disk0"', "read back sectors 10-11: status 0 as written",
                 "read past the end: status 1", "request type 99: status 2",
                 "discard with unmap: status 2", "16 reads in flight: 16 right",
                 "a request without a status byte: status 0x4f configuration change yes"):
        assert line in pyvmm_lines
    assert "~ read after discard: zeroes" in pyvmm_host
    # Both files end up the same, and as the guest's writes say.
    assert pyvmm_image.read_bytes() == qemu_image.read_bytes() == expected_after_blk_guest(original)


def test_read_only_disk_is_never_written(tmp_path):
    qemu_image = pattern_image(tmp_path / "qemu.img")
    pyvmm_image = pattern_image(tmp_path / "pyvmm.img")
    original = pyvmm_image.read_bytes()
    before = os.stat(pyvmm_image)
    lines, _, _ = compare("virtio-blk.bin", [("disk", str(pyvmm_image), True, "ro")], cmdline="ro=1",
                          qemu_devices=[("disk", str(qemu_image), True, "ro")])
    for line in ("offered seg_max 1 ro 1 blk_size 1 flush 1 discard 1 write_zeroes 1",
                 "write sectors 10-11: status 1 used 1", "read back sectors 10-11: status 0 unchanged",
                 "flush: status 0", "discard sectors 20-21: status 1",
                 "write zeroes sectors 30-31: status 1"):
        assert line in lines
    assert pyvmm_image.read_bytes() == original == qemu_image.read_bytes()
    assert os.stat(pyvmm_image).st_mtime_ns == before.st_mtime_ns


def test_misbehaving_driver_on_the_block_device(tmp_path):
    image = pattern_image(tmp_path / "disk.img")
    check_misbehaving_driver([("disk", str(image), False, "disk0")], "device=2")


def test_pyvmm_and_qemu_keep_each_other_off_an_image(tmp_path):
    """The same lock bytes as QEMU's file-posix driver: neither VMM starts on an
    image the other has open for writing."""
    import subprocess
    from pyvmm.devices.virtio.image import RawImage
    image = pattern_image(tmp_path / "shared.img")
    held = RawImage(str(image))                       # what a running pyvmm disk holds
    try:
        qemu = subprocess.run(microvm_command(guests.path("virtio-blk.bin"),
                                              [("disk", str(image), False, "disk0")]),
                              stdin=subprocess.DEVNULL, capture_output=True, timeout=60)
        assert qemu.returncode == 1 and b'Failed to get "write" lock' in qemu.stderr, qemu.stderr
        qemu = subprocess.run(microvm_command(guests.path("virtio-blk.bin"),
                                              [("disk", str(image), True, "disk0")]),
                              stdin=subprocess.DEVNULL, capture_output=True, timeout=60)
        assert qemu.returncode == 1 and b'lock' in qemu.stderr, qemu.stderr
    finally:
        held.close()
    # QEMU holding it: start one that waits for input forever, then try pyvmm.
    command = microvm_command(guests.path("virtio-console.bin"), [("console",), ("disk", str(image), False, "d")])
    qemu = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        output = b""
        while b"console ready for input" not in output:
            line = qemu.stdout.readline()
            assert line, qemu.stderr.read()
            output += line
        pyvmm = run(pyvmm_virtio_command(guests.path("virtio-blk.bin"), [("disk", str(image), False, "d")]))
        assert pyvmm.status == 2 and b"in use by another VM" in pyvmm.stderr, pyvmm
        pyvmm = run(pyvmm_virtio_command(guests.path("virtio-blk.bin"), [("disk", str(image), True, "d")]))
        assert pyvmm.status == 2 and b"in use by another VM" in pyvmm.stderr, pyvmm
    finally:
        qemu.kill()
        qemu.wait()
