"""--console, --rng and --disk: parsing, refusals before anything is built, slots, discovery."""

import os
import subprocess
import sys

import pytest

from pyvmm import guests
from pyvmm.config import ConfigError, VmConfig
from pyvmm.devices.virtio.image import RawImage
from pyvmm.devices.virtio.mmio import EmptySlot, MmioTransport
from pyvmm.virtio_options import DiskSpec, RngSpec, check, parse_disk, parse_rng
from pyvmm.machine.virtio import VirtioSlots
from pyvmm.loader import LoadOptions


@pytest.fixture
def image(tmp_path):
    path = tmp_path / "disk.img"
    path.write_bytes(bytes(4096))
    return str(path)


def test_disk_options_in_cloud_hypervisors_syntax():
    assert vars(parse_disk("path=/x.img")) == {"path": "/x.img", "readonly": False, "id": None,
                                               "rate_limit": None}
    assert vars(parse_disk("path=/x.img,readonly=on,id=root")) == {"path": "/x.img", "readonly": True,
                                                                  "id": "root", "rate_limit": None}
    assert parse_disk("readonly=true,path=y").readonly
    assert not parse_disk("path=y,readonly=off").readonly
    assert parse_rng("").src == "/dev/urandom" and parse_rng("src=/dev/random").src == "/dev/random"


@pytest.mark.parametrize("text, fragment", [
    ("", "path=FILE is required"),
    ("readonly=on", "path=FILE is required"),
    ("/x.img", "is not KEY=VALUE"),
    ("path=a,file=b", "unknown key 'file'"),
    ("path=a,path=b", "path given twice"),
    ("path=a,readonly=yes", "readonly takes on or off"),
    ("path=a,id=" + "x" * 21, "id must be 1 to 20"),
    ("path=a,id=", "id must be 1 to 20"),
])
def test_bad_disk_options(text, fragment):
    with pytest.raises(ConfigError, match=fragment):
        parse_disk(text)


def test_bad_rng_options():
    with pytest.raises(ConfigError, match="give the kernel before it"):
        parse_rng("kernel.elf")
    with pytest.raises(ConfigError, match="unknown key"):
        parse_rng("source=/dev/urandom")


def test_check_refuses_what_cannot_work(image, tmp_path):
    """check() is what `pyvmm run` calls before it reads the kernel."""
    with pytest.raises(ConfigError, match="at most 8"):
        check(VmConfig(console="virtio", rng=RngSpec(), disks=[DiskSpec(image, True)] * 7))
    with pytest.raises(ConfigError, match="two disks with id 'disk1'"):
        check(VmConfig(disks=[DiskSpec(image, True), DiskSpec(image, True), DiskSpec(image, True, "disk1")]))
    with pytest.raises(ConfigError, match="given twice"):
        check(VmConfig(disks=[DiskSpec(image, True), DiskSpec(image)]))
    check(VmConfig(disks=[DiskSpec(image, True), DiskSpec(image, True, "other")]))
    with pytest.raises(ConfigError, match="cannot read .*: No such file"):
        check(VmConfig(rng=RngSpec(str(tmp_path / "none"))))
    with pytest.raises(ConfigError, match="unknown console"):
        check(VmConfig(console="pty"))
    held = RawImage(image)
    try:
        with pytest.raises(ConfigError, match="in use by another VM"):
            check(VmConfig(disks=[DiskSpec(image)]))
    finally:
        held.close()
    check(VmConfig(disks=[DiskSpec(image)]))


def test_devices_fill_the_slots_from_the_top(image):
    config = VmConfig(console="virtio", rng=RngSpec(), disks=[DiskSpec(image, True), DiskSpec(image, True)])
    slots = VirtioSlots.open(config)
    try:
        placed = [(slot, hex(base), irq, type(device).__name__) for slot, base, irq, device in slots.placements()]
        assert placed == [(23, "0xfeb02e00", 23, "VirtioConsole"), (22, "0xfeb02c00", 22, "VirtioRng"),
                          (21, "0xfeb02a00", 21, "VirtioBlock"), (20, "0xfeb02800", 20, "VirtioBlock")]
        assert slots.kernel_cmdline("console=hvc0") == (
            "console=hvc0 virtio_mmio.device=512@0xfeb02e00:23 virtio_mmio.device=512@0xfeb02c00:22 "
            "virtio_mmio.device=512@0xfeb02a00:21 virtio_mmio.device=512@0xfeb02800:20")
        assert slots.acpi_devices()[0] == (23, 0xFEB02E00, 0x200, 23)

        class Recorder:
            def __init__(self):
                self.added = []

            def add_mmio_device(self, base, length, device, name=None, irq=None):
                self.added.append((base, length, type(device), irq))

        machine = Recorder()
        slots.attach(machine, console_output=None)
        assert len(machine.added) == 24
        assert all(length == 0x200 for _, length, _, _ in machine.added)
        assert sorted(base for base, *_ in machine.added) == [0xFEB00000 + 0x200 * n for n in range(24)]
        transports = [entry for entry in machine.added if entry[2] is MmioTransport]
        assert [irq for *_, irq in transports] == [23, 22, 21, 20]
        assert all(irq is None for _, _, kind, irq in machine.added if kind is EmptySlot)
    finally:
        slots.close()


def test_the_command_line_grows_for_a_linux_bzimage_only(image):
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from test_bzimage import make_bzimage
    slots = VirtioSlots.open(VmConfig(rng=RngSpec()))
    try:
        kernels = [(make_bzimage(), True)] + [(open(guests.path(guest), "rb").read(), False)
                                              for guest in ("pvhinfo.elf", "hello.bin", "compute.elf")]
        for kernel, appended in kernels:
            cmdline = slots.boot_options(kernel, LoadOptions(cmdline="x=1")).cmdline
            assert cmdline == ("x=1 virtio_mmio.device=512@0xfeb02e00:23" if appended else "x=1")
        assert slots.boot_options(b"junk", LoadOptions(cmdline="y")).cmdline == "y"
        assert slots.boot_options(kernels[0][0], None).cmdline == "virtio_mmio.device=512@0xfeb02e00:23"
    finally:
        slots.close()


def test_open_closes_what_it_opened_when_a_later_device_fails(image, tmp_path):
    before = len(os.listdir("/proc/self/fd"))
    with pytest.raises(ConfigError, match="No such file"):
        VirtioSlots.open(VmConfig(rng=RngSpec(), disks=[DiskSpec(image), DiskSpec(str(tmp_path / "no"))]))
    assert len(os.listdir("/proc/self/fd")) == before
    RawImage(image).close()                                # and the first image's lock is gone


def pyvmm(*args):
    return subprocess.run([sys.executable, "-m", "pyvmm", *args], capture_output=True, timeout=60)


@pytest.mark.parametrize("args, fragment", [
    (["--disk", "path=/nonexistent.img"], "cannot open disk image /nonexistent.img: No such file"),
    (["--disk", "file=x.img"], "unknown key 'file'"),
    (["--disk", "path=/"], "it is a directory"),
    (["--rng", "src=/nonexistent"], "--rng: cannot read /nonexistent"),
    (["--console", "pty"], "invalid choice"),
])
def test_bad_virtio_options_are_one_usage_line(args, fragment):
    result = pyvmm("run", *args)
    stderr = result.stderr.decode()
    assert result.returncode == 2 and "Traceback" not in stderr, stderr
    assert len(stderr.strip().splitlines()) == 1 and stderr.startswith("pyvmm: error: ")
    assert fragment in stderr


def test_a_locked_image_is_a_usage_error_and_stays_untouched(image):
    held = RawImage(image)
    before = open(image, "rb").read(), os.stat(image).st_mtime_ns
    try:
        result = pyvmm("run", "--disk", f"path={image}", "--memory", "64M")
    finally:
        held.close()
    assert result.returncode == 2
    assert b"in use by another VM" in result.stderr and len(result.stderr.splitlines()) == 1
    assert (open(image, "rb").read(), os.stat(image).st_mtime_ns) == before


def test_net_options():
    from pyvmm.virtio_options import parse_net
    net = parse_net("tap=tap0,mac=52:54:00:AB:CD:EF,id=lan")
    assert (net.tap, net.mac, net.id, net.rx, net.tx) == ("tap0", "52:54:00:ab:cd:ef", "lan", None, None)
    made = parse_net("mac=52:54:00:00:00:01")
    assert made.tap is None
    assert parse_net("").mac.startswith("52:54:00:") and parse_net("").mac != parse_net("").mac
    for bad, words in (("tap=a/b", "interface name"), ("mac=01:00:00:00:00:00", "multicast"),
                       ("mac=1:2:3", "MAC"), ("tap=" + "x" * 16, "interface name"), ("colour=red", "colour"),
                       ("burst=10ms", "burst needs"), ("rate_limit_bw=0", "positive"),
                       ("rate_limit_ops=fast", "not a rate")):
        with pytest.raises(ConfigError, match=words):
            parse_net(bad)


def test_rate_limits_per_direction_and_on_disks():
    from pyvmm.virtio_options import parse_net
    net = parse_net("tap=t,rate_limit_bw=10M/s,tx_rate_limit_ops=500,burst=50ms")
    assert (net.rx.bandwidth, net.rx.ops, net.rx.burst) == (10 << 20, None, 0.05)
    assert (net.tx.bandwidth, net.tx.ops) == (10 << 20, 500)
    only_rx = parse_net("tap=t,rx_rate_limit_ops=100/s")
    assert only_rx.tx is None and only_rx.rx.ops == 100
    disk = parse_disk("path=x,rate_limit_bw=1M,rate_limit_ops=200/s")
    assert (disk.rate_limit.bandwidth, disk.rate_limit.ops, disk.rate_limit.burst) == (1 << 20, 200, 0.1)
    limiter = disk.rate_limit.limiter()
    assert limiter.bandwidth.rate == pytest.approx(1 << 20) and limiter.ops.rate == pytest.approx(200)
    for bad in ("path=x,burst=1s", "path=x,rate_limit_bw=1M,burst=2h", "path=x,rate_limit_bw=1M,burst=0ms"):
        with pytest.raises(ConfigError):
            parse_disk(bad)
