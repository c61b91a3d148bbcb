"""Zero-filled memory (bss, p_memsz > p_filesz) costs the host nothing.

A 226-byte ELF can ask for a 896 MiB zero-filled segment; fresh guest RAM
is already zero, so loading it must neither allocate the zeros on the host
nor touch the guest pages. Measured in a subprocess: its peak RSS (VmHWM)
after loading, against the same process's RSS before.
"""

import os
import struct
import subprocess
import sys
import textwrap

import pytest
from hypothesis import given, settings, strategies as st

from pyvmm.memory import GuestMemory, PAGE_SIZE

MIB = 1 << 20
BSS = 896 * MIB

PROBE = textwrap.dedent("""
    import sys
    from pyvmm.arch.x86_64 import layout
    from pyvmm.loader import load_kernel
    from pyvmm.memory import GuestMemory

    def rss_kib(field):
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith(field + ":"):
                    return int(line.split()[1])

    image = open(sys.argv[1], "rb").read()
    with GuestMemory(layout.ram_ranges(int(sys.argv[2]))) as memory:
        before = rss_kib("VmRSS")
        spec = load_kernel(image, memory)
        peak = rss_kib("VmHWM")
        assert memory.read(spec.loaded[0][0] + spec.loaded[0][1] - 4096, 4096) == bytes(4096)
    print(before, peak)
""")


def bss_elf(memsz, paddr=0x200000):
    """An ELF64 of 64 + 56 + 2 bytes: one PT_LOAD of 2 file bytes and `memsz` in memory."""
    header = struct.pack("<16sHHIQQQIHHHHHH", b"\x7fELF\x02\x01\x01" + bytes(9), 2, 62, 1,
                         paddr, 64, 0, 0, 64, 56, 1, 64, 0, 0)
    phdr = struct.pack("<IIQQQQQQ", 1, 7, 120, paddr, paddr, 2, memsz, 0x1000)
    return header + phdr + b"\xfa\xf4"     # cli; hlt


def test_a_896mib_bss_does_not_grow_the_host(tmp_path):
    path = tmp_path / "bss.elf"
    path.write_bytes(bss_elf(BSS))
    assert len(path.read_bytes()) < 226
    result = subprocess.run([sys.executable, "-c", PROBE, str(path), str(1 << 30)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    before_kib, peak_kib = map(int, result.stdout.split())
    grown = (peak_kib - before_kib) * 1024
    assert grown < 32 * MIB, f"loading a {BSS >> 20} MiB bss raised peak RSS by {grown >> 20} MiB"


@pytest.fixture(scope="module")
def memory():
    with GuestMemory([(0, 4 * MIB)]) as mem:
        yield mem


@settings(max_examples=200, deadline=None)
@given(start=st.integers(0, 3 * MIB), length=st.integers(0, MIB // 2),
       byte=st.sampled_from([0, 0, 0x5A, 0xFF]))
def test_fill_sets_exactly_the_range_and_nothing_around_it(memory, start, length, byte):
    around = 2 * PAGE_SIZE
    low, high = max(0, start - around), min(memory.size, start + length + around)
    memory.write(low, bytes([0xEE]) * (high - low))
    memory.fill(start, length, byte)
    assert memory.read(start, length) == bytes([byte]) * length
    assert memory.read(low, start - low) == bytes([0xEE]) * (start - low)
    assert memory.read(start + length, high - start - length) == \
        bytes([0xEE]) * (high - start - length)


def test_zero_fill_releases_whole_pages_instead_of_writing_them():
    with GuestMemory([(0, 64 * MIB)]) as memory:
        memory.write(0, b"\1" * (64 * MIB))
        touched = _rss_kib()
        memory.fill(4096 + 100, 64 * MIB - 8192)
        assert _rss_kib() < touched - 60 * 1024      # the pages went back to the host
        assert memory.read(0, 4196) == b"\1" * 4196
        assert memory.read(64 * MIB - 4096 + 100, 3996) == b"\1" * 3996
        assert memory.read(4196, 64 * MIB - 8192) == bytes(64 * MIB - 8192)


def _rss_kib():
    with open(f"/proc/{os.getpid()}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
