"""fetch(): first against a fake apt (fast, no network: cache logic and
errors), then for real from Debian's mirrors into the user's cache dir (the
first run takes some seconds, later runs are served from the cache), and
last the real kernel and initramfs booted under QEMU to check /init.
"""

import gzip
import os
import re
import stat
import subprocess
import time

import pytest

from pyvmm.linux import AssetError, Assets, default_cache_dir, fetch
from pyvmm.linux.assets import cached

FAKE_VERSION = "9.9.9-1-test-amd64"
FAKE_KERNEL_PACKAGE = f"linux-image-{FAKE_VERSION}"
FAKE_KERNEL = b"not a kernel, only its bytes"

FAKE_APT_CACHE = """#!/bin/sh
echo "apt-cache $*" >> "$FAKE_APT/log"
if [ ! -e "$FAKE_APT/lists" ]; then echo "E: No packages found" >&2; exit 100; fi
echo "linux-image-cloud-amd64"
echo "  Depends: {package}"
"""

FAKE_APT_GET = """#!/bin/sh
echo "apt-get $*" >> "$FAKE_APT/log"
if [ -e "$FAKE_APT/offline" ]; then
    echo "Err:1 http://mirror.invalid/debian $2" >&2
    echo "E: Failed to fetch http://mirror.invalid/$2.deb  Temporary failure resolving 'mirror.invalid'" >&2
    echo "W: a warning apt prints after its errors" >&2
    exit 100
fi
case "$1" in
    update) touch "$FAKE_APT/lists" ;;
    download) cp "$FAKE_APT/debs/$2.deb" "./$2_1.0_amd64.deb" ;;
esac
"""


def _build_deb(root, package, files, out):
    """A .deb of `files` {path: (bytes, mode)} made with the real dpkg-deb."""
    os.makedirs(root / "DEBIAN")
    (root / "DEBIAN" / "control").write_text(
        f"Package: {package}\nVersion: 1.0\nArchitecture: amd64\n"
        "Maintainer: pyvmm tests <tests@invalid>\nDescription: fake\n")
    for path, (data, mode) in files.items():
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_bytes(data)
        (root / path).chmod(mode)
    subprocess.run(["dpkg-deb", "--root-owner-group", "-Zgzip", "--build", str(root), str(out)],
                   check=True, capture_output=True)


@pytest.fixture(scope="module")
def fake_debs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("debs")
    with open("/bin/true", "rb") as binary:
        stand_in_busybox = binary.read()
    _build_deb(tmp_path_factory.mktemp("kernel"), FAKE_KERNEL_PACKAGE,
               {f"boot/vmlinuz-{FAKE_VERSION}": (FAKE_KERNEL, 0o644),
                f"boot/config-{FAKE_VERSION}": (b"CONFIG_X=y\n", 0o644),
                f"lib/modules/{FAKE_VERSION}/kernel/drivers/virtio/virtio_mmio.ko": (b"mmio", 0o644),
                f"lib/modules/{FAKE_VERSION}/kernel/drivers/virtio/virtio.ko": (b"virtio", 0o644),
                f"lib/modules/{FAKE_VERSION}/kernel/drivers/block/loop.ko": (b"loop", 0o644)},
               folder / f"{FAKE_KERNEL_PACKAGE}.deb")
    _build_deb(tmp_path_factory.mktemp("busybox"), "busybox-static",
               {"bin/busybox": (stand_in_busybox, 0o755)}, folder / "busybox-static.deb")
    return folder


class FakeApt:
    """apt-cache and apt-get stand-ins on PATH (the real dpkg-deb stays):
    they log each call, know no package until `apt-get update`, and fail
    like a dead mirror while `offline` is set."""

    def __init__(self, folder, debs):
        self.folder = folder
        (folder / "debs").symlink_to(debs)
        bin_dir = folder / "bin"
        bin_dir.mkdir()
        for name, script in (("apt-cache", FAKE_APT_CACHE.format(package=FAKE_KERNEL_PACKAGE)),
                             ("apt-get", FAKE_APT_GET)):
            (bin_dir / name).write_text(script)
            (bin_dir / name).chmod(0o755)
        self.bin_dir = bin_dir
        self.know_packages()

    def know_packages(self, known=True):
        self._flag("lists", known)

    def go_offline(self, offline=True):
        self._flag("offline", offline)

    def calls(self):
        log = self.folder / "log"
        return log.read_text().splitlines() if log.exists() else []

    def _flag(self, name, on):
        path = self.folder / name
        if on:
            path.touch()
        elif path.exists():
            path.unlink()


@pytest.fixture
def fake_apt(tmp_path, fake_debs, monkeypatch):
    (tmp_path / "apt").mkdir()
    apt = FakeApt(tmp_path / "apt", fake_debs)
    monkeypatch.setenv("FAKE_APT", str(apt.folder))
    monkeypatch.setenv("PATH", f"{apt.bin_dir}{os.pathsep}{os.environ['PATH']}")
    return apt


@pytest.fixture
def cache_dir(tmp_path):
    return str(tmp_path / "cache")


def _read(path):
    with open(path, "rb") as file:
        return file.read()


def test_fetch_fills_the_cache_layout(fake_apt, cache_dir):
    assets = fetch(cache_dir)
    assert assets == Assets(kernel=os.path.join(cache_dir, "vmlinuz"),
                            initramfs=os.path.join(cache_dir, "initramfs.cpio.gz"),
                            version=FAKE_VERSION,
                            busybox=os.path.join(cache_dir, "busybox"),
                            modules=[os.path.join(cache_dir, "modules", name)
                                     for name in ("virtio.ko", "virtio_mmio.ko")])     # in loading order
    assert sorted(os.listdir(cache_dir)) == [
        ".lock", "COMPLETE", "busybox", "initramfs.cpio.gz", "modules", "vmlinuz"]
    assert sorted(os.listdir(os.path.join(cache_dir, "modules"))) == ["virtio.ko", "virtio_mmio.ko"]
    assert _read(assets.modules[1]) == b"mmio"
    assert _read(assets.kernel) == FAKE_KERNEL
    assert _read(assets.busybox) == _read("/bin/true")
    assert os.stat(assets.busybox).st_mode & 0o777 == 0o755
    assert _read(os.path.join(cache_dir, "COMPLETE")) == f"{FAKE_VERSION}\n".encode()
    assert gzip.decompress(_read(assets.initramfs)).startswith(b"070701")
    assert fake_apt.calls() == ["apt-cache depends linux-image-cloud-amd64",
                                f"apt-get download {FAKE_KERNEL_PACKAGE}",
                                "apt-get download busybox-static"]


def test_complete_cache_runs_no_command(fake_apt, cache_dir, monkeypatch):
    first = fetch(cache_dir)
    monkeypatch.setattr(subprocess, "run", _no_commands)
    monkeypatch.setattr(subprocess, "Popen", _no_commands)
    assert fetch(cache_dir) == first
    assert len(fake_apt.calls()) == 3


def test_missing_marker_fetches_again(fake_apt, cache_dir):
    fetch(cache_dir)
    os.remove(os.path.join(cache_dir, "COMPLETE"))
    assert cached(cache_dir) is None
    assert fetch(cache_dir).version == FAKE_VERSION
    assert len(fake_apt.calls()) == 6


def test_missing_file_fetches_again(fake_apt, cache_dir):
    fetch(cache_dir)
    os.remove(os.path.join(cache_dir, "vmlinuz"))
    assert _read(fetch(cache_dir).kernel) == FAKE_KERNEL
    assert len(fake_apt.calls()) == 6


def test_refresh_fetches_again(fake_apt, cache_dir):
    fetch(cache_dir)
    fetch(cache_dir, refresh=True)
    assert len(fake_apt.calls()) == 6


def test_unknown_package_updates_the_lists_first(fake_apt, cache_dir):
    fake_apt.know_packages(False)
    assert fetch(cache_dir).version == FAKE_VERSION
    assert fake_apt.calls()[:3] == ["apt-cache depends linux-image-cloud-amd64", "apt-get update",
                                    "apt-cache depends linux-image-cloud-amd64"]


def test_network_failure_names_the_step_and_apts_error(fake_apt, cache_dir):
    fetch(cache_dir)
    fake_apt.go_offline()
    with pytest.raises(AssetError) as raised:
        fetch(cache_dir, refresh=True)
    message = str(raised.value)
    assert message == (
        f"cannot download {FAKE_KERNEL_PACKAGE}: `apt-get download {FAKE_KERNEL_PACKAGE}` exited "
        f"with status 100: E: Failed to fetch http://mirror.invalid/{FAKE_KERNEL_PACKAGE}.deb  "
        "Temporary failure resolving 'mirror.invalid'")
    assert "apt-get update" in fake_apt.calls(), "a stale list is worth one update"
    assert cached(cache_dir) is None, "a failed refresh leaves no cache that looks complete"
    assert not [name for name in os.listdir(cache_dir) if name.startswith(".tmp-")]


def test_unknown_package_after_update_is_one_line(fake_apt, cache_dir, monkeypatch):
    monkeypatch.setattr("pyvmm.linux.assets.KERNEL_METAPACKAGE", "pyvmm-no-such-package")
    fake_apt.know_packages(False)
    (fake_apt.bin_dir / "apt-get").write_text('#!/bin/sh\necho "apt-get $*" >> "$FAKE_APT/log"\n')
    with pytest.raises(AssetError) as raised:
        fetch(cache_dir)
    assert str(raised.value) == (
        "cannot resolve the kernel package of pyvmm-no-such-package: `apt-cache depends "
        "pyvmm-no-such-package` exited with status 100: E: No packages found")


def test_missing_apt_is_one_clear_line(fake_apt, cache_dir, tmp_path, monkeypatch):
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    with pytest.raises(AssetError) as raised:
        fetch(cache_dir)
    assert str(raised.value) == (
        "cannot resolve the kernel package of linux-image-cloud-amd64: apt-cache is not "
        "installed (the Linux guest assets need a Debian-based host with apt)")


def test_broken_package_is_a_dpkg_deb_error(fake_apt, cache_dir, tmp_path):
    broken = tmp_path / "broken-debs"
    broken.mkdir()
    for deb in (fake_apt.folder / "debs").iterdir():
        (broken / deb.name).write_bytes(_read(deb))
    (broken / "busybox-static.deb").write_bytes(b"!<arch>\nnot really a package")
    (fake_apt.folder / "debs").unlink()
    (fake_apt.folder / "debs").symlink_to(broken)
    with pytest.raises(AssetError) as raised:
        fetch(cache_dir)
    message = str(raised.value)
    assert message.startswith("cannot unpack busybox-static_1.0_amd64.deb: `dpkg-deb -x ")
    assert "exited with status 2: dpkg-deb" in message and "\n" not in message


def test_left_over_work_dir_is_removed(fake_apt, cache_dir):
    os.makedirs(os.path.join(cache_dir, ".tmp-killed", "kernel"))
    fetch(cache_dir)
    assert not os.path.exists(os.path.join(cache_dir, ".tmp-killed"))


def test_unwritable_cache_is_one_line(fake_apt, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(AssetError, match=r"^cannot create the cache .*/file/linux: Not a directory$"):
        fetch(str(blocker / "linux"))


def test_default_cache_dir(monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", "/somewhere/cache")
    assert default_cache_dir() == "/somewhere/cache/pyvmm/linux"
    monkeypatch.setenv("HOME", "/home/someone")
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/is/ignored")
    assert default_cache_dir() == "/home/someone/.cache/pyvmm/linux"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert default_cache_dir() == "/home/someone/.cache/pyvmm/linux"


def _no_commands(*args, **kwargs):
    raise AssertionError(f"a cached fetch ran a command: {args}")


# The real assets, from Debian's mirrors into the user's cache dir.

@pytest.fixture(scope="module")
def assets():
    started = time.monotonic()
    fetched = fetch()
    print(f"fetch() took {time.monotonic() - started:.1f} s: {fetched}")
    return fetched


@pytest.mark.network
def test_version_is_a_debian_cloud_kernel(assets):
    assert re.fullmatch(r"\d+\.\d+\.\d+-\d+-cloud-amd64", assets.version), assets.version


@pytest.mark.network
def test_kernel_is_a_bzimage_of_that_version(assets):
    kernel = _read(assets.kernel)
    assert kernel[0x202:0x206] == b"HdrS"
    protocol = int.from_bytes(kernel[0x206:0x208], "little")
    assert protocol >= 0x20C, f"boot protocol {protocol:#x} has no 64-bit entry"
    # kernel_version points at "RELEASE (builder) #1 ..." from 0x200 on.
    version_at = int.from_bytes(kernel[0x20E:0x210], "little") + 0x200
    assert kernel[version_at:].startswith(f"{assets.version} ".encode())


@pytest.mark.network
def test_busybox_is_a_static_elf(assets):
    busybox = _read(assets.busybox)
    assert busybox[:4] == b"\x7fELF" and busybox[4] == 2, "not a 64-bit ELF"
    assert b"/lib64/ld-linux" not in busybox[:4096], "not static: it names a dynamic loader"
    assert os.stat(assets.busybox).st_mode & stat.S_IXUSR


@pytest.mark.network
def test_initramfs_holds_that_busybox(assets):
    archive = gzip.decompress(_read(assets.initramfs))
    assert archive.startswith(b"070701") and _read(assets.busybox) in archive


@pytest.mark.network
def test_second_fetch_is_served_from_the_cache(assets, monkeypatch):
    monkeypatch.setattr(subprocess, "run", _no_commands)
    monkeypatch.setattr(subprocess, "Popen", _no_commands)
    started = time.monotonic()
    assert fetch() == assets
    assert time.monotonic() - started < 1


# /init on the real kernel, under QEMU (TCG: some hosts cannot nest KVM for
# QEMU), as an oracle independent of pyvmm's own Linux boot.

def _boot_in_qemu(assets, cmdline, cpus=1, memory_mb=256):
    result = subprocess.run(
        ["qemu-system-x86_64", "-accel", "tcg", "-smp", str(cpus), "-m", str(memory_mb),
         "-display", "none", "-serial", "stdio", "-monitor", "none", "-no-reboot",
         "-kernel", assets.kernel, "-initrd", assets.initramfs,
         "-append", f"console=ttyS0 quiet panic=-1 {cmdline}"],
        stdin=subprocess.DEVNULL, capture_output=True, timeout=180)
    output = result.stdout.decode(errors="replace").replace("\r", "")
    assert result.returncode == 0, output[-2000:] + result.stderr.decode(errors="replace")
    return [line for line in output.splitlines() if line.startswith("pyvmm-")]


@pytest.mark.qemu
@pytest.mark.network
def test_init_default_prints_nproc_and_memtotal_then_powers_off(assets):
    lines = _boot_in_qemu(assets, "", cpus=2, memory_mb=256)
    assert lines[:2] == ["pyvmm-initramfs: init reached", "pyvmm-nproc: 2"]
    memtotal = int(lines[2].removeprefix("pyvmm-memtotal-kb: "))
    assert 128 * 1024 < memtotal < 256 * 1024
    assert lines[3:] == ["pyvmm-initramfs: powering off"]


@pytest.mark.qemu
@pytest.mark.network
def test_init_runs_the_actions_of_the_command_line(assets):
    lines = _boot_in_qemu(assets, "pyvmm.run=uname,bogus,nproc,reboot")
    assert lines == ["pyvmm-initramfs: init reached", f"pyvmm-uname: {assets.version}",
                     "pyvmm-initramfs: unknown action: bogus", "pyvmm-nproc: 1",
                     "pyvmm-initramfs: rebooting"]
