"""What every loader shares: options, the boot spec it returns, placement checks."""

from ..arch.x86_64 import layout
from ..memory import GuestMemoryError


class LoaderError(ValueError):
    """The image cannot be loaded; the message says why, for the user."""


class LoadOptions:
    """raw_mode (real | protected | long) loads a flat binary at load_addr,
    entered at entry (default: load_addr); cmdline is for the kernel."""

    def __init__(self, raw_mode=None, load_addr=None, entry=None, cmdline=""):
        self.raw_mode = raw_mode
        self.load_addr = load_addr
        self.entry = entry
        self.cmdline = cmdline


class BootSpec:
    """How to start the loaded kernel: entry mode (see arch.x86_64.modes),
    entry point, initial registers, and the [(guest addr, size)] written."""

    def __init__(self, format, mode, entry, regs=None, loaded=None):
        self.format = format
        self.mode = mode
        self.entry = entry
        self.regs = regs or {}
        self.loaded = loaded or []

    def __repr__(self):
        return f"BootSpec({self.format}, {self.mode}, entry={self.entry:#x}, loaded={self.loaded})"


def place(memory, addr, data, memsize=None, avoid_boot_tables=True):
    """Copies `data` to guest `addr`, zero-filling up to `memsize` bytes.

    Refuses ranges outside guest RAM and, unless told otherwise, ranges over
    pyvmm's own boot tables; returns the (addr, size) range used.
    """
    size = len(data) if memsize is None else memsize
    if size < len(data):
        raise LoaderError(f"segment at {addr:#x} has more file bytes than memory bytes")
    if avoid_boot_tables and size and addr < layout.RESERVED_LOW[1] and addr + size > layout.RESERVED_LOW[0]:
        raise LoaderError(f"the kernel would overwrite pyvmm's boot tables "
                          f"({addr:#x}-{addr + size:#x} overlaps "
                          f"{layout.RESERVED_LOW[0]:#x}-{layout.RESERVED_LOW[1]:#x})")
    if not memory.contains(addr, size):
        raise LoaderError(f"the kernel does not fit in guest memory: {size} bytes at {addr:#x} "
                          f"(guest RAM is {memory.size >> 20} MiB)")
    try:
        memory.write(addr, data)
        if size > len(data):
            memory.fill(addr + len(data), size - len(data))
    except GuestMemoryError as error:  # cannot happen after contains(); kept as a guard
        raise LoaderError(str(error)) from None
    return addr, size
