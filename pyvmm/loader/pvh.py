"""PVH: an ELF kernel with a Xen XEN_ELFNOTE_PHYS32_ENTRY note (Linux vmlinux has one).

The x86/HVM direct boot ABI (Xen's arch-x86/hvm/start_info.h): PT_LOAD
segments at their physical addresses, a `struct hvm_start_info` (version 1,
with a memory map) whose address is in EBX, entry at the note's 32-bit
address in 32-bit protected mode with flat segments and paging off.
Modules (the initrd first, Linux's convention) go page-aligned at the top of
the RAM below 4 GiB, as QEMU and Firecracker place an initrd.
"""

import struct

from ..arch.x86_64 import layout, memmap, modes
from . import elf
from .common import PAGE_SIZE, GuestWriter, InfoArea, LoaderError, c_string, format_errors

XEN_NOTE_NAME = b"Xen"
XEN_ELFNOTE_PHYS32_ENTRY = 18
START_MAGIC = 0x336EC578
START_INFO_VERSION = 1

# magic, version, flags, nr_modules, modlist_paddr, cmdline_paddr, rsdp_paddr,
# memmap_paddr, memmap_entries, reserved: 56 bytes.
START_INFO = struct.Struct("<IIIIQQQQII")
MODLIST_ENTRY = struct.Struct("<QQQQ")     # paddr, size, cmdline_paddr, reserved
MEMMAP_ENTRY = struct.Struct("<QQII")      # addr, size, type, reserved

ACCEPTS = ("initrd", "modules")


def phys32_entry(image):
    """The 32-bit entry from the Xen PHYS32_ENTRY note, None if there is no
    such note; LoaderError if the ELF or the note is malformed."""
    for name, note_type, desc in elf.iter_notes(image):
        if name != XEN_NOTE_NAME or note_type != XEN_ELFNOTE_PHYS32_ENTRY:
            continue
        if len(desc) < 4:
            raise LoaderError(f"the XEN_ELFNOTE_PHYS32_ENTRY note holds {len(desc)} bytes, "
                              f"not a 32-bit address")
        # Linux stores it as a pointer-sized value: the upper half must be zero.
        value = int.from_bytes(desc[:8], "little")
        if value >> 32:
            raise LoaderError(f"the PVH entry {value:#x} is above 4 GiB")
        return value
    return None


def probe(image):
    if not elf.probe(image):
        return False
    try:
        return _has_pvh_note(image)
    except LoaderError:
        return False  # a broken ELF: the plain ELF loader names the problem


def _has_pvh_note(image):
    return any(name == XEN_NOTE_NAME and note_type == XEN_ELFNOTE_PHYS32_ENTRY
               for name, note_type, _desc in elf.iter_notes(image))


def load(image, memory, options):
    with format_errors("PVH"):
        entry = phys32_entry(image)
        if entry is None:
            raise LoaderError("the ELF has no XEN_ELFNOTE_PHYS32_ENTRY note")
        _class, _elf_entry, segments = elf.load_segments(image)
        writer = GuestWriter(memory)
        writer.write_kernel(elf.segment_pieces(image, segments))
        modules = []
        if options.initrd is not None:
            modules.append((None, options.initrd, "the initrd"))
        modules.extend((name, data, f"module {index + 1}")
                       for index, (name, data) in enumerate(options.modules))
        placed = _place_modules_high(writer, memmap.low_ram_end(memory.size), modules)
        tables = writer.place_entry_tables(modes.PROTECTED, entry)
        cmdline_addr = writer.write_cmdline(options.cmdline)
        info = _write_start_info(writer, memory.size, placed, cmdline_addr,
                                 options.rsdp_addr or 0)
        return writer.boot_spec("pvh", modes.PROTECTED, entry, regs={"rbx": info},
                                tables=tables)


def _place_modules_high(writer, ceiling, modules):
    """Each module (with its NUL-terminated command line after its bytes, if it
    has one) page-aligned, top-down from `ceiling` (at the highest free place
    below the one before, in RAM above 1 MiB, else in conventional memory);
    returns [(addr, size, cmdline address or 0)] in the given order."""
    placed = []
    for name, data, what in modules:
        string = b"" if name is None else c_string(name, f"{what}'s command line")
        total = len(data) + len(string)
        windows = [(layout.HIGH_MEMORY, ceiling), layout.BOOT_DATA_LOW]
        addr = writer.find_free_high(total, PAGE_SIZE, windows)
        if addr is None:
            raise writer.no_room(what, total, windows)
        writer.write_parts(addr, [data, string], f"{what} ({len(data)} bytes)")
        placed.append((addr, len(data), addr + len(data) if string else 0))
        ceiling = addr
    return placed


def _write_start_info(writer, ram_size, modules, cmdline_addr, rsdp_addr):
    area = InfoArea()
    info_at = area.add(bytes(START_INFO.size))
    modlist_at = area.add(b"".join(MODLIST_ENTRY.pack(addr, size, string, 0)
                                   for addr, size, string in modules))
    entries = memmap.memory_map(ram_size)
    memmap_at = area.add(b"".join(MEMMAP_ENTRY.pack(addr, size, kind, 0)
                                  for addr, size, kind in entries))
    base = area.address(writer)
    area.put(info_at, START_INFO.pack(
        START_MAGIC, START_INFO_VERSION, 0, len(modules),
        base + modlist_at if modules else 0, cmdline_addr, rsdp_addr,
        base + memmap_at, len(entries), 0))
    area.write_to(writer, base)
    return base + info_at
