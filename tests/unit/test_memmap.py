"""The guest memory map: one map for every protocol, consistent with the KVM slots."""

import pytest
from hypothesis import given, strategies as st

from pyvmm.arch.x86_64 import layout, memmap

KIB, MIB, GIB = 1 << 10, 1 << 20, 1 << 30
LOW_FIXED = [
    (0, 0x9FC00, memmap.RAM),
    (0x9FC00, 0x400, memmap.RESERVED),
    (0xE0000, 0x20000, memmap.RESERVED),
]


def test_e820_type_numbers_are_the_acpi_ones():
    assert (memmap.RAM, memmap.RESERVED, memmap.ACPI, memmap.NVS) == (1, 2, 3, 4)


@pytest.mark.parametrize("ram_size, tail", [
    (1 * MIB, []),
    (2 * MIB, [(MIB, MIB, memmap.RAM)]),
    (128 * MIB, [(MIB, 127 * MIB, memmap.RAM)]),
    (3 * GIB, [(MIB, 3 * GIB - MIB, memmap.RAM)]),
    (3 * GIB + 4 * KIB, [(MIB, 3 * GIB - MIB, memmap.RAM), (4 * GIB, 4 * KIB, memmap.RAM)]),
    (8 * GIB, [(MIB, 3 * GIB - MIB, memmap.RAM), (4 * GIB, 5 * GIB, memmap.RAM)]),
])
def test_known_sizes(ram_size, tail):
    assert memmap.memory_map(ram_size) == LOW_FIXED + tail


def test_the_fixed_entries_follow_layout():
    entries = memmap.memory_map(64 * MIB)
    assert entries[0] == (0, layout.EBDA_START, memmap.RAM)
    assert entries[1] == (layout.EBDA_START, 0xA0000 - layout.EBDA_START, memmap.RESERVED)
    assert entries[2] == (layout.BIOS_AREA, layout.BIOS_AREA_END - layout.BIOS_AREA,
                          memmap.RESERVED)
    # pyvmm's firmware tables sit in reserved memory, never in RAM.
    for table in (layout.ACPI_TABLES, layout.MPTABLE):
        assert any(addr <= table < addr + size and kind == memmap.RESERVED
                   for addr, size, kind in entries)


def test_too_little_ram_is_refused():
    with pytest.raises(ValueError, match="minimum"):
        memmap.memory_map(layout.MIN_MEMORY - 4096)


@given(pages=st.integers(layout.MIN_MEMORY // 4096, (64 * GIB) // 4096))
def test_map_agrees_with_the_kvm_slots(pages):
    ram_size = pages * 4096
    entries = memmap.memory_map(ram_size)
    slots = layout.ram_ranges(ram_size)
    # Sorted, non-overlapping, non-empty.
    for (addr, size, _), (next_addr, _, _) in zip(entries, entries[1:]):
        assert size > 0 and addr + size <= next_addr
    # Every entry (RAM or reserved) is backed by a KVM slot.
    for addr, size, _kind in entries:
        assert any(start <= addr and addr + size <= start + length for start, length in slots)
    # Every slot byte is listed, except the legacy hole [0xA0000, BIOS_AREA).
    listed = sum(size for _addr, size, _kind in entries)
    assert listed == ram_size - (layout.BIOS_AREA - memmap.LEGACY_HOLE_START)
    ram = sum(size for _addr, size, kind in entries if kind == memmap.RAM)
    assert ram == ram_size - (layout.BIOS_AREA_END - layout.EBDA_START)
    assert memmap.low_ram_end(ram_size) == min(ram_size, layout.MMIO_HOLE_START)


@pytest.mark.parametrize("ram_size, upper", [
    (1 * MIB, 0), (128 * MIB, 127 * KIB), (4 * GIB, 3 * MIB - KIB), (16 * GIB, 3 * MIB - KIB),
])
def test_multiboot_memory_sizes(ram_size, upper):
    assert memmap.mem_lower_kib(ram_size) == 639   # what QEMU's BIOS reports too
    assert memmap.mem_upper_kib(ram_size) == upper
