"""What every loader shares: options, the boot spec it returns, placement checks."""

import contextlib

from ..arch.x86_64 import layout, memmap
from ..memory import GuestMemoryError

PAGE_SIZE = 4096


class LoaderError(ValueError):
    """The image cannot be loaded; the message says why, for the user."""


class LoadOptions:
    """How to load the kernel.

    raw_mode (real | protected | long) loads a flat binary at load_addr,
    entered at entry (default: load_addr). cmdline is for the kernel;
    kernel_path is the kernel's file name as the user gave it (multiboot puts
    "kernel_path cmdline" in the command line, as QEMU and GRUB do).
    modules is a list of (cmdline, bytes): multiboot modules, or PVH modules
    after the initrd; a module's cmdline is conventionally "path args".
    initrd is the initial ramdisk's bytes (Linux bzImage and PVH), or None.
    rsdp_addr is the guest address of the ACPI RSDP when the VMM built ACPI
    tables, or None.
    """

    def __init__(self, raw_mode=None, load_addr=None, entry=None, cmdline="",
                 kernel_path=None, modules=(), initrd=None, rsdp_addr=None):
        self.raw_mode = raw_mode
        self.load_addr = load_addr
        self.entry = entry
        self.cmdline = cmdline
        self.kernel_path = kernel_path
        self.modules = list(modules)
        self.initrd = initrd
        self.rsdp_addr = rsdp_addr


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


# --- shared by the boot-protocol loaders (multiboot, PVH, bzImage) -----------------

_STACK_PAGE = layout.BOOT_STACK_TOP & ~(PAGE_SIZE - 1)

# Guest memory that pyvmm uses whatever the protocol, or that the memory
# map does not offer as RAM: nothing a loader places may overlap it.
PYVMM_AREAS = (
    (layout.RESERVED_LOW[0], layout.RESERVED_LOW[1], "pyvmm's GDT, IDT and page tables"),
    (_STACK_PAGE, _STACK_PAGE + PAGE_SIZE, "pyvmm's boot stack"),
    (layout.EBDA_START, memmap.LEGACY_HOLE_START, "the EBDA"),
    (memmap.LEGACY_HOLE_START, layout.BIOS_AREA, "the legacy VGA hole"),
    (layout.BIOS_AREA, layout.BIOS_AREA_END, "the BIOS area (ACPI and MP tables)"),
)


def align_up(value, alignment):
    return (value + alignment - 1) // alignment * alignment


def align_down(value, alignment):
    return value // alignment * alignment


@contextlib.contextmanager
def format_errors(name):
    """Prefixes every LoaderError raised inside with the format's name."""
    try:
        yield
    except LoaderError as error:
        message = str(error)
        if message.startswith(f"{name}: "):
            raise
        raise LoaderError(f"{name}: {message}") from None


def c_string(text, what):
    """`text` (str or bytes) as NUL-terminated bytes; an inner NUL is refused."""
    if isinstance(text, str):
        try:
            data = text.encode("utf-8", "surrogateescape")
        except UnicodeEncodeError:
            raise LoaderError(f"{what} {text!r} cannot be encoded (UTF-8, or bytes "
                              f"as the command line passed them)") from None
    else:
        data = bytes(text)
    if b"\0" in data:
        raise LoaderError(f"{what} contains a NUL byte")
    return data + b"\0"


class GuestWriter:
    """Writes a loader's pieces into guest memory, checking each first: inside
    guest RAM, clear of pyvmm's own areas and of every piece placed before.

    `loaded` lists the (addr, size) ranges written, for BootSpec.loaded.
    """

    def __init__(self, memory):
        self.memory = memory
        self.used = list(PYVMM_AREAS)
        self.loaded = []

    def check(self, addr, size, what, ignore=()):
        """LoaderError unless [addr, addr+size) is free RAM."""
        if addr < 0 or size < 0 or not self.memory.contains(addr, size):
            raise LoaderError(f"{what} ({size} bytes at {addr:#x}) does not fit in guest RAM "
                              f"({self.memory.size >> 20} MiB)")
        for start, end, other in self.used:
            if size and addr < end and start < addr + size and other not in ignore:
                raise LoaderError(f"{what} ({addr:#x}-{addr + size:#x}) would overlap "
                                  f"{other} ({start:#x}-{end:#x})")

    def claim(self, addr, size, what, ignore=()):
        """Reserves a range without writing it (e.g. memory a kernel needs later)."""
        self.check(addr, size, what, ignore)
        if size:
            self.used.append((addr, addr + size, what))

    def write(self, addr, data, what, memsize=None, ignore=()):
        """Claims [addr, addr+memsize) and writes `data` there, zero-filling the rest."""
        size = len(data) if memsize is None else memsize
        if size < len(data):
            raise LoaderError(f"{what} has more file bytes than memory bytes")
        self.claim(addr, size, what, ignore)
        if not size:
            return addr
        self.memory.write(addr, data)
        if size > len(data):
            self.memory.fill(addr + len(data), size - len(data))
        self.loaded.append((addr, size))
        return addr

    def write_kernel(self, pieces, what="the kernel"):
        """Writes [(addr, data, memsize)] of one image; its pieces may touch each other."""
        for addr, data, memsize in pieces:
            if memsize:
                self.write(addr, data, what, memsize, ignore=(what,))

    def write_cmdline(self, text):
        """The kernel command line at layout.CMDLINE; returns its address."""
        data = c_string(text, "the command line")
        if len(data) > layout.CMDLINE_MAX:
            raise LoaderError(f"the command line is {len(data) - 1} bytes "
                              f"(at most {layout.CMDLINE_MAX - 1})")
        return self.write(layout.CMDLINE, data, "the command line")


class InfoArea:
    """Builds the boot-information block for [layout.BOOT_INFO, +BOOT_INFO_SIZE):
    pieces are appended and get their guest address at once."""

    def __init__(self, base=layout.BOOT_INFO, limit=layout.BOOT_INFO_SIZE):
        self.base = base
        self.limit = limit
        self.data = bytearray()

    def add(self, blob, align=8):
        offset = align_up(len(self.data), align)
        if offset + len(blob) > self.limit:
            raise LoaderError(f"the boot information needs more than the "
                              f"{self.limit} bytes pyvmm has for it")
        self.data.extend(b"\0" * (offset - len(self.data)))
        self.data.extend(blob)
        return self.base + offset

    def put(self, addr, blob):
        """Overwrites bytes added earlier (a header whose pointers are known last)."""
        offset = addr - self.base
        if offset < 0 or offset + len(blob) > len(self.data):
            raise LoaderError(f"internal: boot information patch at {addr:#x} is outside the block")
        self.data[offset:offset + len(blob)] = blob

    def write_to(self, writer):
        return writer.write(self.base, bytes(self.data), "the boot information")
