"""Bad user input: one line `pyvmm: error: ...`, status 2, no traceback, nothing changed on disk.

These fail before /dev/kvm is opened, so they run on any host.
"""

import os
import subprocess
import sys

import pytest

from pyvmm import guests


def pyvmm(*args, stdin=b""):
    return subprocess.run([sys.executable, "-m", "pyvmm", *args], input=stdin,
                          capture_output=True, timeout=60)


def assert_usage_error(result, fragment):
    stderr = result.stderr.decode()
    assert result.returncode == 2, stderr
    assert "Traceback" not in stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith("pyvmm: error: "), stderr
    assert fragment in lines[0]


@pytest.fixture
def elf_file(tmp_path):
    path = tmp_path / "kernel.elf"
    path.write_bytes(open(guests.path("compute.elf"), "rb").read())
    return path


@pytest.mark.parametrize("args, fragment", [
    ([], "COMMAND"),
    (["boot"], "invalid choice"),
    (["run", "--bogus"], "unrecognized arguments: --bogus"),
    (["run", "--cpus", "many"], "invalid int value"),
    (["run", "--cpus", "0"], "--cpus"),
    (["run", "--cpus", "255"], "between 1 and 254"),
    (["run", "--memory", "lots"], "invalid size"),
    (["run", "--memory", "0"], "too small"),
    (["run", "--memory", "100T"], "more than this host has"),
    (["run", "--memory", "2000001"], "multiple of 4K"),
    (["run", "--timeout", "-1"], "--timeout"),
    (["run", "--raw-mode", "unreal"], "invalid choice"),
    (["run", "--serial", "tty"], "unknown serial output"),
    (["run", "--serial", "socket="], "use stdio, null, file:PATH, pty or socket=PATH"),
    (["run", "--load-addr", "0x1000"], "need --raw-mode"),
    (["run", "--raw-mode", "long", "--load-addr", "zz"], "invalid address"),
])
def test_bad_flags(args, fragment):
    assert_usage_error(pyvmm(*args), fragment)


def test_missing_kernel(tmp_path):
    assert_usage_error(pyvmm("run", str(tmp_path / "nope")), "No such file")


def test_kernel_is_a_directory(tmp_path):
    assert_usage_error(pyvmm("run", str(tmp_path)), "directory")


def test_unreadable_kernel(tmp_path):
    path = tmp_path / "secret"
    path.write_bytes(b"\x7fELF")
    path.chmod(0)
    if os.access(path, os.R_OK):
        pytest.skip("running as root: permissions do not stop reads")
    assert_usage_error(pyvmm("run", str(path)), "Permission denied")


def test_missing_module_and_initrd(tmp_path):
    kernel = guests.path("hello.bin")
    assert_usage_error(pyvmm("run", kernel, "--module", f"{tmp_path}/gone.mod args"),
                       "cannot read module")
    assert_usage_error(pyvmm("run", kernel, "--initrd", str(tmp_path)), "initrd")


def test_empty_kernel(tmp_path):
    path = tmp_path / "empty"
    path.write_bytes(b"")
    assert_usage_error(pyvmm("run", str(path)), "empty")


def test_unknown_format(tmp_path):
    path = tmp_path / "text"
    path.write_bytes(b"just some text\n" * 10)
    assert_usage_error(pyvmm("run", str(path)), "unknown kernel format")


def test_truncated_elf(tmp_path, elf_file):
    data = elf_file.read_bytes()
    elf_file.write_bytes(data[:40])
    assert_usage_error(pyvmm("run", str(elf_file)), "ELF")


def test_kernel_larger_than_memory(tmp_path):
    path = tmp_path / "big.bin"
    path.write_bytes(b"\x90" * (3 << 20))
    assert_usage_error(pyvmm("run", str(path), "--raw-mode", "protected", "--memory", "2M"),
                       "does not fit in guest memory")


def test_raw_binary_that_leaves_no_room_for_the_boot_tables(tmp_path):
    # It fills all conventional memory of a 1 MiB guest: pyvmm's GDT has
    # nowhere to go, and the error says what is in the way.
    path = tmp_path / "low.bin"
    path.write_bytes(b"\xf4" * 0x9FC00)
    assert_usage_error(pyvmm("run", str(path), "--raw-mode", "protected", "--load-addr", "0",
                             "--memory", "1M"),
                       "no room for pyvmm's GDT and IDT (72 bytes): 0x500-0x9fc00 is taken by "
                       "the kernel (0x0-0x9fc00)")


def test_real_mode_binary_above_1mib(tmp_path):
    path = tmp_path / "real.bin"
    path.write_bytes(b"\xf4")
    assert_usage_error(pyvmm("run", str(path), "--raw-mode", "real", "--load-addr", "0x100000"),
                       "below 1 MiB")


def test_serial_file_is_not_touched_when_the_kernel_is_bad(tmp_path):
    serial = tmp_path / "console.log"
    serial.write_bytes(b"precious")
    result = pyvmm("run", str(tmp_path / "missing"), "--serial", f"file:{serial}")
    assert_usage_error(result, "No such file")
    assert serial.read_bytes() == b"precious"


def test_kernel_file_is_never_modified(tmp_path, elf_file):
    before = elf_file.read_bytes()
    pyvmm("run", str(elf_file), "--memory", "1M")
    assert elf_file.read_bytes() == before
