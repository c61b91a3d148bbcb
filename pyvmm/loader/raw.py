"""Flat binaries: bytes copied to a load address, entered in a chosen mode."""

from ..arch.x86_64 import layout, modes
from .common import GuestWriter, LoaderError

REAL_MODE_LIMIT = 1 << 20
FOUR_GIB = 1 << 32


def probe(image):
    return False  # a flat binary has no signature; only loaded when asked for


def load(image, memory, options):
    mode = options.raw_mode
    if mode not in modes.MODES:
        raise LoaderError(f"unknown raw mode {mode!r} (choose real, protected or long)")
    if not image:
        raise LoaderError("the kernel image is empty")
    default_load = layout.REAL_MODE_LOAD if mode == modes.REAL else layout.HIGH_MEMORY
    load_addr = default_load if options.load_addr is None else options.load_addr
    entry = load_addr if options.entry is None else options.entry
    if load_addr < 0 or entry < 0:
        raise LoaderError("addresses must not be negative")
    if mode == modes.REAL:
        if load_addr + len(image) > REAL_MODE_LIMIT or entry >= REAL_MODE_LIMIT:
            raise LoaderError("a real-mode binary and its entry must lie below 1 MiB")
        if entry >= 0x10000 and entry & 0xF and (entry >> 4) > 0xFFFF:
            raise LoaderError(f"real-mode entry {entry:#x} cannot be reached")
    elif entry >= FOUR_GIB:
        raise LoaderError(f"entry {entry:#x} is above 4 GiB, which pyvmm does not map at entry")
    # A flat binary goes exactly where the user said, firmware areas included;
    # pyvmm's GDT, page tables and stack move out of its way.
    writer = GuestWriter(memory, kernel_over_firmware=True)
    writer.write_kernel([(load_addr, image, len(image))])
    tables = writer.place_entry_tables(mode, entry)
    return writer.boot_spec(f"raw-{mode}", mode, entry, tables=tables)
