"""Multiboot v1 kernels, loaded the way QEMU's -kernel loads them.

QEMU (hw/i386/multiboot.c) scans the first 8 KiB for the header; with the
address fields flag (bit 16) it loads the file by those fields (the "a.out
kludge", whatever the file format), otherwise it loads the file as an ELF32.
It builds the info structure with a memory map, the command line
"kernel-path args", modules page-aligned after the kernel each with the
command line "module-path args", and enters the kernel in 32-bit protected
mode with EAX = 0x2BADB002 and EBX = the info structure. pyvmm does the same
at pyvmm's own addresses: the info block at layout.BOOT_INFO, the command
line at layout.CMDLINE, each moved elsewhere when the kernel is there (QEMU
writes its info at 0x9000-0x9558 even then, and the kernel overwrites it).
Only the boot loader name differs ("pyvmm").
"""

import struct

from ..arch.x86_64 import memmap, modes
from . import elf
from .common import PAGE_SIZE, GuestWriter, InfoArea, LoaderError, align_up, c_string, format_errors

HEADER_MAGIC = 0x1BADB002
BOOTLOADER_MAGIC = 0x2BADB002
_MAGIC_BYTES = struct.pack("<I", HEADER_MAGIC)
SEARCH_LIMIT = 8192 - 48      # QEMU looks for the header at offsets below this
# Like QEMU, pyvmm honours only this header flag; the others (page-aligned
# modules: always so; memory info: always given; video mode: no VBE) need nothing.
FLAG_ADDRESS_FIELDS = 1 << 16

_HEADER = struct.Struct("<III")            # magic, flags, checksum
# header_addr, load_addr, load_end_addr, bss_end_addr, entry_addr
_ADDRESS_FIELDS = struct.Struct("<IIIII")

# Info structure (Multiboot 0.6.96, section 3.3): 88 bytes.
INFO_SIZE = 88
INFO_FLAGS, INFO_MEM_LOWER, INFO_MEM_UPPER, INFO_BOOT_DEVICE = 0, 4, 8, 12
INFO_CMDLINE, INFO_MODS_COUNT, INFO_MODS_ADDR = 16, 20, 24
INFO_MMAP_LENGTH, INFO_MMAP_ADDR, INFO_BOOT_LOADER_NAME = 44, 48, 64
HAS_MEMORY, HAS_BOOT_DEVICE, HAS_CMDLINE, HAS_MODS = 1 << 0, 1 << 1, 1 << 2, 1 << 3
HAS_MMAP, HAS_BOOT_LOADER_NAME = 1 << 6, 1 << 9
# The fields QEMU fills, and its boot device: BIOS drive 0x80, no partition.
INFO_FLAGS_GIVEN = (HAS_MEMORY | HAS_BOOT_DEVICE | HAS_CMDLINE | HAS_MODS | HAS_MMAP
                    | HAS_BOOT_LOADER_NAME)
BOOT_DEVICE = 0x8000FFFF
BOOT_LOADER_NAME = "pyvmm"

MODULE_ENTRY = struct.Struct("<IIII")      # mod_start, mod_end (exclusive), string, reserved
MMAP_ENTRY = struct.Struct("<IQQI")        # size (of the rest: 20), base_addr, length, type
MMAP_ENTRY_SIZE_FIELD = MMAP_ENTRY.size - 4

FOUR_GIB = 1 << 32
ACCEPTS = ("modules",)


def find_header(image):
    """(offset, flags) of the first valid multiboot header, or None."""
    limit = min(len(image) - _HEADER.size, SEARCH_LIMIT - 1)
    offset = image.find(_MAGIC_BYTES, 0, limit + 4) if limit >= 0 else -1
    while 0 <= offset <= limit:
        if offset % 4 == 0:
            magic, flags, checksum = _HEADER.unpack_from(image, offset)
            if (magic + flags + checksum) & 0xFFFFFFFF == 0:
                return offset, flags
        offset = image.find(_MAGIC_BYTES, offset + 1, limit + 4)
    return None


def probe(image):
    return find_header(image) is not None


def load(image, memory, options):
    with format_errors("multiboot"):
        found = find_header(image)
        if found is None:
            raise LoaderError("no multiboot header in the first 8 KiB")
        offset, flags = found
        writer = GuestWriter(memory)
        if flags & FLAG_ADDRESS_FIELDS:
            entry, kernel_end = _load_by_address_fields(image, offset, writer)
        else:
            entry, kernel_end = _load_elf(image, writer)
        modules = _place_modules(writer, kernel_end, options.modules)
        tables = writer.place_entry_tables(modes.PROTECTED, entry)
        info = _write_boot_information(writer, memory.size, modules, options)
        return writer.boot_spec("multiboot", modes.PROTECTED, entry,
                                regs={"rax": BOOTLOADER_MAGIC, "rbx": info}, tables=tables)


def _load_by_address_fields(image, offset, writer):
    """The a.out kludge, checked as QEMU checks it; returns (entry, kernel end)."""
    fields_at = offset + _HEADER.size
    if fields_at + _ADDRESS_FIELDS.size > len(image):
        raise LoaderError("the header's address fields run past the end of the file")
    header_addr, load_addr, load_end_addr, bss_end_addr, entry = _ADDRESS_FIELDS.unpack_from(
        image, fields_at)
    if header_addr < load_addr or header_addr - load_addr > offset:
        raise LoaderError(f"header_addr {header_addr:#x} and load_addr {load_addr:#x} do not "
                          f"match the header's file offset {offset:#x}")
    text_offset = offset - (header_addr - load_addr)
    if load_end_addr:
        if load_end_addr < load_addr:
            raise LoaderError(f"load_end_addr {load_end_addr:#x} is below load_addr {load_addr:#x}")
        load_size = load_end_addr - load_addr
        if text_offset + load_size > len(image):
            raise LoaderError(f"load_end_addr {load_end_addr:#x} asks for more bytes "
                              f"than the file has")
    else:
        load_size = len(image) - text_offset
    if load_addr + load_size > FOUR_GIB:
        raise LoaderError("the kernel does not fit below 4 GiB")
    kernel_size = load_size
    if bss_end_addr:
        if bss_end_addr < load_addr + load_size:
            raise LoaderError(f"bss_end_addr {bss_end_addr:#x} is below the end of the loaded "
                              f"image {load_addr + load_size:#x}")
        kernel_size = bss_end_addr - load_addr
    if kernel_size == 0:
        raise LoaderError("the address fields load nothing")
    text = memoryview(image)[text_offset:text_offset + load_size]
    writer.write_kernel([(load_addr, text, kernel_size)])
    return entry, load_addr + kernel_size


def _load_elf(image, writer):
    """An ELF32 kernel; returns (entry, kernel end)."""
    if not elf.probe(image):
        raise LoaderError("the header has no address fields (flag bit 16) and the file is not ELF")
    if elf.header(image).machine == elf.EM_X86_64:
        # QEMU refuses these too: "Cannot load x86-64 image, give a 32bit one."
        raise LoaderError("a 64-bit ELF cannot be booted as multiboot (QEMU refuses it too); "
                          "link it as ELF32 or set the header's address fields")
    _class, entry, segments = elf.load_segments(image)
    writer.write_kernel(elf.segment_pieces(image, segments))
    # Like QEMU's ELF loader: an entry given as a virtual address inside an
    # executable segment whose vaddr differs from its paddr is translated.
    for ph in segments:
        if (ph.flags & elf.PF_X and ph.vaddr != ph.paddr
                and ph.vaddr <= entry < ph.vaddr + ph.filesz):
            entry = entry - ph.vaddr + ph.paddr
            break
    return entry, max(ph.paddr + ph.memsz for ph in segments)


def _write_boot_information(writer, ram_size, modules, options):
    """Writes the command line and the info block; returns the info block's address."""
    if options.kernel_path is None:
        cmdline = options.cmdline
    else:  # QEMU passes "path args", so "path " when there are no args
        cmdline = f"{options.kernel_path} {options.cmdline}"
    cmdline_addr = writer.write_cmdline(cmdline)

    area = InfoArea()
    info_at = area.add(bytes(INFO_SIZE))
    entries = memmap.memory_map(ram_size)
    mmap_at = area.add(b"".join(MMAP_ENTRY.pack(MMAP_ENTRY_SIZE_FIELD, addr, size, kind)
                                for addr, size, kind in entries))
    mods_at = area.add(b"".join(MODULE_ENTRY.pack(start, end, string, 0)
                                for start, end, string in modules))
    name_at = area.add(c_string(BOOT_LOADER_NAME, "the boot loader name"), align=1)
    base = area.address(writer)
    info = bytearray(INFO_SIZE)
    for field, value in ((INFO_FLAGS, INFO_FLAGS_GIVEN),
                         (INFO_MEM_LOWER, memmap.mem_lower_kib(ram_size)),
                         (INFO_MEM_UPPER, memmap.mem_upper_kib(ram_size)),
                         (INFO_BOOT_DEVICE, BOOT_DEVICE),
                         (INFO_CMDLINE, cmdline_addr),
                         (INFO_MODS_COUNT, len(modules)),
                         (INFO_MODS_ADDR, base + mods_at),
                         (INFO_MMAP_LENGTH, MMAP_ENTRY.size * len(entries)),
                         (INFO_MMAP_ADDR, base + mmap_at),
                         (INFO_BOOT_LOADER_NAME, base + name_at)):
        struct.pack_into("<I", info, field, value)
    area.put(info_at, info)
    area.write_to(writer, base)
    return base + info_at


def _place_modules(writer, kernel_end, modules):
    """Each module page-aligned after the kernel (at the first free page from
    there on), its command line right after its bytes; returns
    [(mod_start, mod_end, string address)]."""
    placed = []
    cursor = align_up(kernel_end, PAGE_SIZE)
    ceiling = min(memmap.low_ram_end(writer.memory.size), FOUR_GIB)
    for index, (name, data) in enumerate(modules):
        string = c_string(name, f"module {index + 1}'s command line")
        what = f"module {index + 1} ({len(data)} bytes)"
        size = len(data) + len(string)
        addr = writer.find_free(size, PAGE_SIZE, [(cursor, ceiling)])
        if addr is None:
            raise LoaderError(f"{what} does not fit in guest memory after the kernel and the "
                              f"modules before it (guest RAM below 4 GiB ends at {ceiling:#x})")
        writer.write_parts(addr, [data, string], what)
        placed.append((addr, addr + len(data), addr + len(data)))
        cursor = align_up(addr + size, PAGE_SIZE)
    return placed
