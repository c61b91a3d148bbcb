"""Kernel, initrd and module files: checked with fstat before a byte is read, read in pieces.

A FIFO must not hang pyvmm, /dev/zero must be refused at once, and a file
larger than guest RAM must be refused without being read. The CLI runs in
a subprocess with a 1 GiB address-space limit, so a regression fails the
test (MemoryError) instead of exhausting the host.
"""

import os
import resource
import subprocess
import sys
import tempfile

import peak_rss
import pytest
from hypothesis import given, settings, strategies as st

from pyvmm import guests
from pyvmm.config import VmConfig
from pyvmm.loader import files
from pyvmm.loader.files import InputFileError, read_file, read_kernel

MIB = 1 << 20
ADDRESS_SPACE_LIMIT = 1 << 30


def _limit_address_space():
    resource.setrlimit(resource.RLIMIT_AS, (ADDRESS_SPACE_LIMIT, ADDRESS_SPACE_LIMIT))


def peak_rss_of(*args, timeout=30):
    """(status, stderr, peak RSS in bytes) of one `pyvmm ARGS`, measured for that child alone."""
    with tempfile.TemporaryDirectory() as directory:
        report = os.path.join(directory, "peak")
        process = peak_rss.popen([sys.executable, "-m", "pyvmm", *args], report, stdin=subprocess.DEVNULL,
                                 stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                 preexec_fn=_limit_address_space)
        try:
            _stdout, stderr = process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            peak_rss.kill(process)
            raise AssertionError(f"pyvmm {' '.join(args)} still ran after {timeout} s") from None
        return process.returncode, stderr.decode(errors="replace"), peak_rss.peak_bytes(report)


def assert_one_usage_error(status, stderr, *fragments):
    lines = stderr.strip().splitlines()
    assert status == 2, stderr
    assert len(lines) == 1 and lines[0].startswith("pyvmm: error: "), stderr
    for fragment in fragments:
        assert fragment in lines[0], stderr


@pytest.fixture
def fifo(tmp_path):
    path = tmp_path / "kernel.fifo"
    os.mkfifo(path)
    return str(path)


def test_a_fifo_kernel_is_refused_without_waiting_for_a_writer(fifo):
    status, stderr, _peak = peak_rss_of("run", fifo, timeout=20)
    assert_one_usage_error(status, stderr, fifo, "a FIFO, not a regular file")


@pytest.mark.parametrize("option", ["--initrd", "--module"])
def test_a_fifo_initrd_or_module_is_refused(fifo, option):
    status, stderr, _peak = peak_rss_of("run", guests.path("hello.bin"), option, fifo, timeout=20)
    assert_one_usage_error(status, stderr, fifo, "FIFO")


def test_dev_zero_as_a_kernel_is_refused_at_once():
    status, stderr, peak = peak_rss_of("run", "/dev/zero", timeout=20)
    assert_one_usage_error(status, stderr, "/dev/zero", "character device")
    assert peak < 200 * MIB


def test_a_2gib_kernel_for_a_16mib_guest_is_refused_before_it_is_read(tmp_path):
    path = tmp_path / "huge.bin"
    with open(path, "wb") as sparse:
        sparse.truncate(2 << 30)
    status, stderr, peak = peak_rss_of("run", str(path), "--raw-mode", "long", "--memory", "16M")
    assert_one_usage_error(status, stderr, str(path), "does not fit in guest memory", "16 MiB")
    assert peak < 200 * MIB, f"peak RSS {peak >> 20} MiB: the file was read"


# --- read_file and read_kernel, in this process ---------------------------------------

def test_read_file_refuses_directories_and_missing_files(tmp_path):
    with pytest.raises(InputFileError, match="cannot read kernel .*: it is a directory"):
        read_file(str(tmp_path), "kernel", MIB)
    with pytest.raises(InputFileError, match="cannot read initrd .*No such file"):
        read_file(str(tmp_path / "gone"), "initrd", MIB)


def test_read_file_refuses_devices():
    with pytest.raises(InputFileError, match="/dev/null: it is a character device"):
        read_file("/dev/null", "module", MIB)


@settings(max_examples=25, deadline=None)
@given(size=st.integers(0, 3 * files.CHUNK + 17), seed=st.binary(min_size=1, max_size=64))
def test_read_file_returns_every_byte_across_chunks(tmp_path_factory, size, seed):
    path = tmp_path_factory.mktemp("read") / "blob"
    content = (seed * (size // len(seed) + 1))[:size]
    path.write_bytes(content)
    assert read_file(str(path), "kernel", size) == content
    if size:
        with pytest.raises(InputFileError, match=f"kernel .* \\({size} bytes\\) does not fit"):
            read_file(str(path), "kernel", size - 1)


def test_kernel_initrd_and_modules_share_the_guest_ram_budget(tmp_path):
    kernel = tmp_path / "kernel"
    kernel.write_bytes(b"k" * (600 << 10))
    initrd = tmp_path / "initrd"
    initrd.write_bytes(b"i" * (600 << 10))
    config = VmConfig(kernel=str(kernel), memory=MIB, initrd=str(initrd))
    with pytest.raises(InputFileError,
                       match="initrd .* does not fit in guest memory with the files before it "
                             r"\(guest RAM is 1 MiB\)"):
        read_kernel(config)
    config = VmConfig(kernel=str(kernel), memory=2 * MIB, initrd=str(initrd),
                      modules=[f"{kernel} args"])
    image, options = read_kernel(config)
    assert (len(image), len(options.initrd)) == (600 << 10, 600 << 10)
    assert [(spec, len(data)) for spec, data in options.modules] == [(f"{kernel} args", 600 << 10)]
