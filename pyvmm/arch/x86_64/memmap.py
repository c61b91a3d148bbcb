"""The guest-physical memory map that every boot protocol hands the guest.

The Linux e820 table, the multiboot mmap and the PVH memmap are all built
from memory_map(), so the kernels see one map however they are booted. It
agrees with layout.ram_ranges(), which decides the KVM memory slots: every
entry lies inside a slot; the reserved ones are the EBDA and the BIOS area,
where pyvmm puts its firmware tables (ACPI, MP table).
"""

from . import layout

# E820 / ACPI address range types (the multiboot and PVH maps use the same).
RAM, RESERVED, ACPI, NVS = 1, 2, 3, 4

LEGACY_HOLE_START = 0xA0000   # VGA window and option ROMs up to 1 MiB
ONE_MIB = 0x100000


def memory_map(ram_size):
    """[(addr, size, type)] sorted by address, for `ram_size` bytes of guest RAM.

    [0xA0000, BIOS_AREA) is left out: it is in no table the guest should use.
    """
    if ram_size < layout.MIN_MEMORY:
        raise ValueError(f"guest RAM of {ram_size} bytes is below the minimum "
                         f"{layout.MIN_MEMORY} bytes")
    entries = [
        (0, layout.EBDA_START, RAM),
        (layout.EBDA_START, LEGACY_HOLE_START - layout.EBDA_START, RESERVED),
        (layout.BIOS_AREA, layout.BIOS_AREA_END - layout.BIOS_AREA, RESERVED),
    ]
    top = low_ram_end(ram_size)
    if top > ONE_MIB:
        entries.append((ONE_MIB, top - ONE_MIB, RAM))
    if ram_size > layout.MMIO_HOLE_START:
        entries.append((layout.FOUR_GIB, ram_size - layout.MMIO_HOLE_START, RAM))
    return entries


def low_ram_end(ram_size):
    """End of the RAM below the MMIO hole: the ceiling for 32-bit boot data."""
    return min(ram_size, layout.MMIO_HOLE_START)


def mem_lower_kib(ram_size):
    """Multiboot mem_lower: KiB of RAM from address 0 (what INT 12h reports)."""
    return _contiguous_ram_from(0, ram_size) // 1024


def mem_upper_kib(ram_size):
    """Multiboot mem_upper: KiB of RAM from 1 MiB up to the first hole."""
    return _contiguous_ram_from(ONE_MIB, ram_size) // 1024


def _contiguous_ram_from(start, ram_size):
    end = start
    for addr, size, kind in memory_map(ram_size):
        if kind == RAM and addr == end:
            end += size
    return end - start
