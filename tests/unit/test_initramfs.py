"""The initramfs and its cpio encoder, read back by an independent newc reader.

Any binary stands in for busybox here (/bin/true), so nothing needs a network.
"""

import gzip
import os
import shutil
import stat
import subprocess

import pytest
from hypothesis import given, strategies as st

from pyvmm.linux import AssetError, build_initramfs
from pyvmm.linux.cpio import CpioWriter
from pyvmm.linux.initramfs import APPLETS, INIT_MARKER

STAND_IN_BUSYBOX = "/bin/true"
FIELDS = ("ino", "mode", "uid", "gid", "nlink", "mtime", "filesize",
          "devmajor", "devminor", "rdevmajor", "rdevminor", "namesize", "check")
HEADER_SIZE = 110


class Entry:
    def __init__(self, offset, name, data, **fields):
        self.offset = offset
        self.name = name
        self.data = data
        self.__dict__.update(fields)


def read_cpio(archive):
    """Entries of a newc archive up to and including TRAILER!!!, checking the
    magic, the 4-byte alignment of every header and data, and the padding."""
    entries, offset = [], 0
    while True:
        assert offset % 4 == 0, f"header at {offset} is not 4-byte aligned"
        header = archive[offset:offset + HEADER_SIZE]
        assert header[:6] == b"070701", f"bad magic at {offset}: {header[:6]!r}"
        fields = {name: int(header[6 + 8 * i:14 + 8 * i], 16) for i, name in enumerate(FIELDS)}
        name_start = offset + HEADER_SIZE
        name = archive[name_start:name_start + fields["namesize"]]
        assert name.endswith(b"\0") and b"\0" not in name[:-1]
        data_start = _aligned(name_start + fields["namesize"])
        assert archive[name_start + fields["namesize"]:data_start].strip(b"\0") == b""
        data = archive[data_start:data_start + fields["filesize"]]
        assert len(data) == fields["filesize"], "archive ends inside an entry"
        end = _aligned(data_start + fields["filesize"])
        assert archive[data_start + fields["filesize"]:end].strip(b"\0") == b""
        entries.append(Entry(offset, name[:-1].decode(), data, **fields))
        offset = end
        if entries[-1].name == "TRAILER!!!":
            assert offset == len(archive), "bytes after the trailer"
            return entries


def _aligned(offset):
    return (offset + 3) & ~3


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("initramfs") / "initramfs.cpio.gz")
    assert build_initramfs(STAND_IN_BUSYBOX, path) == path
    with open(path, "rb") as built:
        return gzip.decompress(built.read())


@pytest.fixture(scope="module")
def tree(archive):
    return {entry.name: entry for entry in read_cpio(archive)}


def test_archive_ends_with_an_empty_trailer(archive):
    trailer = read_cpio(archive)[-1]
    assert trailer.name == "TRAILER!!!" and trailer.filesize == 0 and trailer.mode == 0
    assert len(archive) % 4 == 0


def test_tree_has_the_mount_points_busybox_and_init(tree):
    for directory in ("bin", "dev", "proc", "sys", "tmp", "root"):
        assert stat.S_ISDIR(tree[directory].mode), directory
    assert set(tree) >= {"bin/busybox", "init", "dev/console", "dev/null"}


def test_every_entry_comes_after_its_directory(archive):
    seen = set()
    for entry in read_cpio(archive):
        parent = entry.name.rpartition("/")[0]
        assert not parent or parent in seen, entry.name
        seen.add(entry.name)


def test_busybox_is_the_given_binary_and_executable(tree):
    with open(STAND_IN_BUSYBOX, "rb") as binary:
        assert tree["bin/busybox"].data == binary.read()
    assert tree["bin/busybox"].mode == stat.S_IFREG | 0o755


def test_init_is_an_executable_script_with_the_marker_and_mounts(tree):
    init = tree["init"]
    assert init.mode == stat.S_IFREG | 0o755
    script = init.data.decode()
    assert script.startswith("#!/bin/sh\n")
    assert f'echo "{INIT_MARKER}"' in script
    assert INIT_MARKER == "pyvmm-initramfs: init reached"
    for mount in ("mount -t proc proc /proc", "mount -t sysfs sysfs /sys",
                  "mount -t devtmpfs devtmpfs /dev"):
        assert mount in script
    assert script.index("mount -t devtmpfs") < script.index(INIT_MARKER)
    for text in ("/proc/cmdline", "pyvmm.run=", "pyvmm-nproc: ", "pyvmm-memtotal-kb: ",
                 "poweroff -f", "reboot -f"):
        assert text in script
    assert script.rstrip().endswith("poweroff -f"), "an init that exits panics the kernel"


def test_init_is_valid_posix_sh(tree, tmp_path):
    script = tmp_path / "init"
    script.write_bytes(tree["init"].data)
    result = subprocess.run(["sh", "-n", str(script)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_applets_are_symlinks_to_busybox(tree):
    for applet in ("sh", "mount", "poweroff", "reboot", "cat", "echo", "nproc"):
        assert applet in APPLETS
    for applet in APPLETS:
        link = tree[f"bin/{applet}"]
        assert stat.S_ISLNK(link.mode) and link.data == b"/bin/busybox", applet


def test_console_and_null_are_device_nodes(tree):
    console, null = tree["dev/console"], tree["dev/null"]
    assert stat.S_ISCHR(console.mode) and (console.rdevmajor, console.rdevminor) == (5, 1)
    assert stat.S_ISCHR(null.mode) and (null.rdevmajor, null.rdevminor) == (1, 3)


def test_owners_times_and_inodes(archive):
    entries = read_cpio(archive)
    for entry in entries:
        assert (entry.uid, entry.gid, entry.mtime, entry.check) == (0, 0, 0, 0), entry.name
    inodes = [entry.ino for entry in entries[:-1]]
    assert len(set(inodes)) == len(inodes) and 0 not in inodes


def test_same_input_gives_the_same_bytes(tmp_path):
    first, second = str(tmp_path / "a.cpio.gz"), str(tmp_path / "b.cpio.gz")
    build_initramfs(STAND_IN_BUSYBOX, first)
    build_initramfs(STAND_IN_BUSYBOX, second)
    with open(first, "rb") as a, open(second, "rb") as b:
        assert a.read() == b.read()


def test_name_without_gz_is_plain_cpio(tmp_path, archive):
    path = str(tmp_path / "initramfs.cpio")
    build_initramfs(STAND_IN_BUSYBOX, path)
    with open(path, "rb") as built:
        assert built.read() == archive
    assert os.listdir(tmp_path) == ["initramfs.cpio"], "no temporary file left"


@pytest.mark.skipif(shutil.which("cpio") is None, reason="GNU cpio is not installed")
def test_gnu_cpio_lists_the_same_names(tmp_path, tree):
    path = tmp_path / "initramfs.cpio"
    build_initramfs(STAND_IN_BUSYBOX, str(path))
    listing = subprocess.run(["cpio", "-it", "--quiet"], stdin=path.open("rb"),
                             capture_output=True, text=True, check=True).stdout.split()
    assert listing == [name for name in tree if name != "TRAILER!!!"]


def test_missing_busybox_is_one_clear_line(tmp_path):
    with pytest.raises(AssetError) as raised:
        build_initramfs(str(tmp_path / "nowhere"), str(tmp_path / "out.cpio"))
    message = str(raised.value)
    assert "cannot read busybox" in message and "No such file" in message and "\n" not in message


def test_unwritable_output_is_an_asset_error(tmp_path):
    with pytest.raises(AssetError, match="cannot write the initramfs"):
        build_initramfs(STAND_IN_BUSYBOX, str(tmp_path / "no-such-dir" / "out.cpio"))


@pytest.mark.parametrize("name", ["", "/abs", "a/../b", "a//b", "./a", "TRAILER!!!"])
def test_writer_refuses_names_the_kernel_would_misplace(name):
    with pytest.raises(ValueError):
        CpioWriter().file(name, b"")


def test_writer_refuses_duplicates_and_orphans():
    cpio = CpioWriter()
    cpio.directory("bin")
    cpio.file("bin/x", b"")
    with pytest.raises(ValueError):
        cpio.file("bin/x", b"")
    with pytest.raises(ValueError):
        cpio.file("etc/passwd", b"")


_names = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789._-", min_size=1, max_size=12).filter(
    lambda name: name not in (".", ".."))


@given(st.dictionaries(_names, st.binary(max_size=40), max_size=8), st.text(min_size=1, max_size=30))
def test_writer_round_trips_any_files(files, target):
    cpio = CpioWriter()
    cpio.directory("d", mode=0o750)
    for name, data in files.items():
        cpio.file(f"d/{name}", data, mode=0o640)
    cpio.symlink("link", target)
    entries = read_cpio(cpio.finish())
    assert [(e.name, e.mode, e.data) for e in entries] == (
        [("d", stat.S_IFDIR | 0o750, b"")]
        + [(f"d/{name}", stat.S_IFREG | 0o640, data) for name, data in files.items()]
        + [("link", stat.S_IFLNK | 0o777, target.encode()), ("TRAILER!!!", 0, b"")])
