"""Linux bzImage, booted by the 64-bit boot protocol (Documentation/arch/x86/boot.rst).

The real-mode setup code is not run: pyvmm builds the zero page (struct
boot_params) itself from the image's setup header, loads the protected-mode
kernel, and enters its 64-bit entry (load address + 0x200) in long mode
with RSI = the zero page. That needs boot protocol 2.12 (Linux 3.8) and a
64-bit kernel (xloadflags XLF_KERNEL_64).
"""

import struct

from ..arch.x86_64 import layout, memmap, modes
from .common import (PAGE_SIZE, GuestWriter, LoaderError, align_down, align_up, c_string,
                     format_errors)

HEADER_MAGIC = b"HdrS"
MIN_PROTOCOL = 0x020C
BOOT_FLAG_MAGIC = 0xAA55
SECTOR = 512
DEFAULT_SETUP_SECTS = 4       # what setup_sects == 0 means
ENTRY_64_OFFSET = 0x200
BOOT_PARAMS_SIZE = 4096

# Setup header fields: the same offsets in the image and in boot_params.
SETUP_HEADER = 0x1F1
SETUP_SECTS = 0x1F1
VID_MODE = 0x1FA
BOOT_FLAG = 0x1FE
JUMP = 0x200                  # its second byte + 0x202 is where the header ends
HEADER = 0x202
VERSION = 0x206
TYPE_OF_LOADER = 0x210
LOADFLAGS = 0x211
CODE32_START = 0x214
RAMDISK_IMAGE = 0x218
RAMDISK_SIZE = 0x21C
HEAP_END_PTR = 0x224
CMD_LINE_PTR = 0x228
INITRD_ADDR_MAX = 0x22C
KERNEL_ALIGNMENT = 0x230
RELOCATABLE_KERNEL = 0x234
XLOADFLAGS = 0x236
CMDLINE_SIZE = 0x238
SETUP_DATA = 0x250            # list of struct setup_data: pyvmm passes none
PREF_ADDRESS = 0x258
INIT_SIZE = 0x260
HEADER_END_2_12 = 0x268       # protocol 2.12 defines fields up to here
HEADER_AREA_END = 0x290       # where boot_params' room for the setup header ends

# Zero-page fields outside the setup header (zero-page.rst).
ACPI_RSDP_ADDR = 0x070
E820_ENTRIES = 0x1E8
E820_TABLE = 0x2D0
E820_ENTRY = struct.Struct("<QQI")
E820_MAX_ENTRIES = 128

LOADED_HIGH = 0x01
CAN_USE_HEAP = 0x80           # KEEP_SEGMENTS (0x40) is obsolete: not set
XLF_KERNEL_64 = 0x01
LOADER_UNDEFINED = 0xFF       # type_of_loader for a loader without an assigned id
# The real-mode heap end the boot.rst sample uses; only the (unused) setup code reads it.
HEAP_END = 0xE000
VIDEO_MODES = {"normal": 0xFFFF, "ext": 0xFFFE, "ask": 0xFFFD}

ACCEPTS = ("initrd",)


def probe(image):
    return bytes(image[HEADER:HEADER + 4]) == HEADER_MAGIC


def _u8(image, offset):
    return image[offset]


def _u16(image, offset):
    return struct.unpack_from("<H", image, offset)[0]


def _u32(image, offset):
    return struct.unpack_from("<I", image, offset)[0]


def _u64(image, offset):
    return struct.unpack_from("<Q", image, offset)[0]


def load(image, memory, options):
    with format_errors("bzImage"):
        header_end, kernel = _check_image(image)
        params = bytearray(BOOT_PARAMS_SIZE)
        params[SETUP_HEADER:header_end] = image[SETUP_HEADER:header_end]

        writer = GuestWriter(memory)
        low_top = memmap.low_ram_end(memory.size)
        load_addr, window_start, kernel_top = _choose_load_address(params, len(kernel), low_top)
        writer.claim(window_start, kernel_top - window_start, "the kernel (with its init_size)")
        writer.write(load_addr, kernel, "the kernel", ignore=("the kernel (with its init_size)",))

        cmdline = c_string(options.cmdline, "the command line")
        if len(cmdline) - 1 > _u32(params, CMDLINE_SIZE):
            raise LoaderError(f"the command line is {len(cmdline) - 1} bytes; this kernel "
                              f"takes at most {_u32(params, CMDLINE_SIZE)}")
        cmdline_addr = writer.write_cmdline(options.cmdline)
        if options.initrd is not None:
            initrd_addr = _place_initrd(writer, params, options.initrd, kernel_top, low_top)
            struct.pack_into("<II", params, RAMDISK_IMAGE, initrd_addr, len(options.initrd))

        params[TYPE_OF_LOADER] = LOADER_UNDEFINED
        params[LOADFLAGS] |= CAN_USE_HEAP
        struct.pack_into("<H", params, HEAP_END_PTR, HEAP_END - 0x200)
        struct.pack_into("<H", params, VID_MODE, video_mode(options.cmdline))
        struct.pack_into("<I", params, CODE32_START, load_addr)
        struct.pack_into("<I", params, CMD_LINE_PTR, cmdline_addr)
        struct.pack_into("<Q", params, SETUP_DATA, 0)
        if options.rsdp_addr:
            struct.pack_into("<Q", params, ACPI_RSDP_ADDR, options.rsdp_addr)
        _write_e820(params, memmap.memory_map(memory.size))
        entry = load_addr + ENTRY_64_OFFSET
        tables = writer.place_entry_tables(modes.LONG, entry)
        zero_page = writer.place(bytes(params), "the zero page (boot_params)", layout.ZERO_PAGE,
                                 align=PAGE_SIZE)
        return writer.boot_spec("bzImage", modes.LONG, entry, regs={"rsi": zero_page},
                                tables=tables)


def _check_image(image):
    """(end of the setup header, protected-mode kernel bytes), or LoaderError."""
    if len(image) < HEADER_END_2_12:
        raise LoaderError("the setup header is truncated")
    version = _u16(image, VERSION)
    if version < MIN_PROTOCOL:
        raise LoaderError(f"boot protocol {version >> 8}.{version & 0xFF:02d} is older than 2.12; "
                          f"pyvmm needs the 64-bit entry of Linux 3.8 or later")
    if _u16(image, BOOT_FLAG) != BOOT_FLAG_MAGIC:
        raise LoaderError(f"boot_flag is {_u16(image, BOOT_FLAG):#06x}, not 0xaa55")
    if not _u8(image, LOADFLAGS) & LOADED_HIGH:
        raise LoaderError("the kernel is a zImage (loadflags LOADED_HIGH is clear), not a bzImage")
    if not _u16(image, XLOADFLAGS) & XLF_KERNEL_64:
        raise LoaderError("this is a 32-bit kernel (xloadflags has no XLF_KERNEL_64); "
                          "pyvmm boots 64-bit kernels only")
    header_end = HEADER + _u8(image, JUMP + 1)
    if not HEADER_END_2_12 <= header_end <= HEADER_AREA_END:
        raise LoaderError(f"the setup header would end at {header_end:#x}; "
                          f"it must end between {HEADER_END_2_12:#x} and {HEADER_AREA_END:#x}")
    setup_size = ((_u8(image, SETUP_SECTS) or DEFAULT_SETUP_SECTS) + 1) * SECTOR
    if setup_size >= len(image):
        raise LoaderError(f"the file ({len(image)} bytes) ends within its "
                          f"{setup_size}-byte setup code: no protected-mode kernel")
    return header_end, memoryview(image)[setup_size:]


def _choose_load_address(params, kernel_size, low_top):
    """(load address, [start, end) of the memory the kernel needs while it starts).

    A relocatable kernel goes to pref_address when it fits, else (like any
    other) to 1 MiB. It runs from align_up(load, kernel_alignment), but never
    below pref_address (the decompressor's LOAD_PHYSICAL_ADDR); a fixed one
    runs from pref_address. Either needs init_size bytes from there.
    """
    relocatable = params[RELOCATABLE_KERNEL] != 0
    alignment = _u32(params, KERNEL_ALIGNMENT)
    pref_address = _u64(params, PREF_ADDRESS)
    init_size = _u32(params, INIT_SIZE)
    if relocatable and (alignment == 0 or alignment & (alignment - 1)):
        raise LoaderError(f"kernel_alignment {alignment:#x} is not a power of two")

    def window(load_addr):
        start = max(align_up(load_addr, alignment), pref_address) if relocatable else pref_address
        return min(load_addr, start), max(load_addr + kernel_size, start + init_size)

    load_addr = layout.HIGH_MEMORY
    if (relocatable and pref_address >= layout.HIGH_MEMORY and pref_address % alignment == 0
            and window(pref_address)[1] <= low_top):
        load_addr = pref_address
    start, end = window(load_addr)
    if end > low_top:
        raise LoaderError(f"the kernel needs memory up to {end:#x} while it starts "
                          f"(init_size {init_size:#x}), but guest RAM below 4 GiB ends at "
                          f"{low_top:#x}; give the guest more memory")
    return load_addr, start, end


def _place_initrd(writer, params, initrd, kernel_top, low_top):
    """The initrd page-aligned as high as the kernel allows; returns its address."""
    ceiling = min(_u32(params, INITRD_ADDR_MAX) + 1, low_top)
    addr = align_down(ceiling - len(initrd), PAGE_SIZE)
    if addr < kernel_top:
        raise LoaderError(f"the initrd ({len(initrd)} bytes) does not fit between the kernel's "
                          f"end {kernel_top:#x} and its highest allowed address {ceiling:#x}")
    writer.write(addr, initrd, f"the initrd ({len(initrd)} bytes)")
    return addr


def _write_e820(params, entries):
    if len(entries) > E820_MAX_ENTRIES:
        raise LoaderError(f"the memory map has {len(entries)} entries "
                          f"(the zero page holds {E820_MAX_ENTRIES})")
    params[E820_ENTRIES] = len(entries)
    for index, (addr, size, kind) in enumerate(entries):
        E820_ENTRY.pack_into(params, E820_TABLE + index * E820_ENTRY.size, addr, size, kind)


def video_mode(cmdline):
    """vid_mode for the command line's vga= option (boot.rst), "normal" without one."""
    mode = VIDEO_MODES["normal"]
    for word in cmdline.split():
        if word.startswith("vga="):
            value = word[4:]
            try:
                mode = VIDEO_MODES[value] if value in VIDEO_MODES else int(value, 0) & 0xFFFF
            except ValueError:
                pass  # the kernel ignores a vga= it cannot parse; so does pyvmm
    return mode
