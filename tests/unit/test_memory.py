"""GuestMemory: every access is bounds-checked; nothing outside guest RAM is touched."""

import pytest
from hypothesis import given, strategies as st

from pyvmm.memory import GuestMemory, GuestMemoryError

MIB = 1 << 20


@pytest.fixture(scope="module")
def memory():
    with GuestMemory([(0, 2 * MIB), (4 * MIB, MIB)]) as mem:
        yield mem


@given(addr=st.integers(min_value=-2**64, max_value=2**65), length=st.integers(0, 3 * MIB))
def test_access_is_allowed_exactly_inside_one_region(memory, addr, length):
    inside = (0 <= addr and addr + length <= 2 * MIB) or (4 * MIB <= addr and addr + length <= 5 * MIB)
    assert memory.contains(addr, length) == inside
    if inside:
        assert len(memory.read(addr, length)) == length
    else:
        with pytest.raises(GuestMemoryError):
            memory.read(addr, length)
        with pytest.raises(GuestMemoryError):
            memory.write(addr, bytes(length))


@given(addr=st.integers(0, 2 * MIB - 8), value=st.integers(0, 2**64 - 1))
def test_little_endian_integers_round_trip(memory, addr, value):
    for bits in (8, 16, 32, 64):
        getattr(memory, f"write_u{bits}")(addr, value)
        assert getattr(memory, f"read_u{bits}")(addr) == value & ((1 << bits) - 1)
        assert memory.read(addr, bits // 8) == (value & ((1 << bits) - 1)).to_bytes(bits // 8, "little")


@pytest.mark.parametrize("bits", [16, 32, 64])
def test_integer_straddling_the_end_of_ram_is_refused(memory, bits):
    with pytest.raises(GuestMemoryError, match="outside guest RAM"):
        getattr(memory, f"read_u{bits}")(2 * MIB - 1)


@given(data=st.binary(min_size=1, max_size=64), addr=st.integers(4 * MIB, 5 * MIB - 64))
def test_view_is_zero_copy(memory, data, addr):
    view = memory.view(addr, len(data))
    view[:] = data
    assert memory.read(addr, len(data)) == data
    memory.fill(addr, len(data), 0xAB)
    assert bytes(view) == b"\xab" * len(data)


def test_hole_between_regions_is_outside_ram(memory):
    with pytest.raises(GuestMemoryError):
        memory.read_u8(3 * MIB)
    with pytest.raises(GuestMemoryError):
        memory.view(2 * MIB - 4, 8)


def test_overlapping_and_unaligned_regions_are_refused():
    with pytest.raises(GuestMemoryError, match="overlaps"):
        GuestMemory([(0, 2 * MIB), (MIB, MIB)])
    with pytest.raises(GuestMemoryError, match="page-aligned"):
        GuestMemory([(0, 1000)])


def test_unmappable_size_is_a_clear_error():
    with pytest.raises(GuestMemoryError, match="cannot map"):
        GuestMemory([(0, 1 << 62)])


def test_view_outlives_close_safely():
    mem = GuestMemory([(0, MIB)])
    mem.write(0, b"kept")
    view = mem.view(0, 4)
    mem.close()
    assert bytes(view) == b"kept"   # the mapping lives until the view is gone


def _vm_flags(host_addr, size):
    """The VmFlags of the mapping that holds [host_addr, host_addr+size), from /proc/self/smaps."""
    with open("/proc/self/smaps") as smaps:
        inside = False
        for line in smaps:
            first = line.split()[0]
            if "-" in first and not line.startswith("VmFlags"):
                start, end = (int(value, 16) for value in first.split("-"))
                inside = start <= host_addr and host_addr + size <= end
            elif inside and line.startswith("VmFlags:"):
                return line.split()[1:]
    raise AssertionError(f"no one mapping holds {size:#x} bytes at {host_addr:#x}")


def test_guest_ram_is_left_out_of_core_dumps():
    # As QEMU does by default (dump-guest-core=off): a crash dump of the VMM
    # must not carry the guest's memory.
    with GuestMemory([(0, 2 * MIB), (4 * MIB, MIB)]) as memory:
        for region in memory.regions:
            assert "dd" in _vm_flags(region.host_address(), region.size)
