"""What every loader shares: options, the boot spec it returns, and GuestWriter,
which places the kernel and pyvmm's boot structures in guest memory without
any of them overlapping."""

import contextlib

from ..arch.x86_64 import layout, memmap, modes

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
    entry point, initial registers, where the entry state's tables and stack
    are (modes.EntryTables), the [(guest addr, size)] written, and `regions`,
    the [(start, end, what)] of everything placed (kernel, modules, boot data)."""

    def __init__(self, format, mode, entry, regs=None, loaded=None, tables=None, regions=None):
        self.format = format
        self.mode = mode
        self.entry = entry
        self.regs = regs or {}
        self.loaded = loaded or []
        self.tables = tables or modes.EntryTables()
        self.regions = regions or []

    def __repr__(self):
        return f"BootSpec({self.format}, {self.mode}, entry={self.entry:#x}, loaded={self.loaded})"


# The firmware's part of the first 1 MiB: the memory map does not offer it
# as RAM, and pyvmm's ACPI and MP tables live there. pyvmm's boot structures
# never go there, nor does a kernel loaded by a boot protocol.
FIRMWARE_AREAS = (
    (layout.EBDA_START, memmap.LEGACY_HOLE_START, "the EBDA"),
    (memmap.LEGACY_HOLE_START, layout.BIOS_AREA, "the legacy VGA hole"),
    (layout.BIOS_AREA, layout.BIOS_AREA_END, "the BIOS area (ACPI and MP tables)"),
)
_FIRMWARE = tuple(what for _start, _end, what in FIRMWARE_AREAS)


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
    guest RAM, clear of the firmware areas and of every piece placed before.

    The kernel and its modules are placed where the image says; pyvmm's own
    structures go through place(), which keeps a structure at its usual
    address when that is free and otherwise moves it to the lowest free place
    in conventional memory, then above 1 MiB. A kernel loaded as a flat
    binary or plain ELF (`kernel_over_firmware`) may also cover the firmware
    areas, as it always could; pyvmm's structures never do.

    `loaded` lists the (addr, size) ranges written, for BootSpec.loaded.
    """

    def __init__(self, memory, kernel_over_firmware=False):
        self.memory = memory
        self.used = list(FIRMWARE_AREAS)
        self.loaded = []
        self.kernel_ignores = _FIRMWARE if kernel_over_firmware else ()

    # --- checks and claims -------------------------------------------------------------
    def check(self, addr, size, what, ignore=()):
        """LoaderError unless [addr, addr+size) is free RAM."""
        if addr < 0 or size < 0 or not self.memory.contains(addr, size):
            raise LoaderError(f"{what} ({size} bytes at {addr:#x}) does not fit in guest memory "
                              f"(guest RAM is {self.memory.size >> 20} MiB)")
        for start, end, other in self.used:
            if size and addr < end and start < addr + size and other not in ignore:
                raise LoaderError(f"{what} ({addr:#x}-{addr + size:#x}) would overlap "
                                  f"{other} ({start:#x}-{end:#x})")

    def is_free(self, addr, size):
        try:
            self.check(addr, size, "")
        except LoaderError:
            return False
        return True

    def claim(self, addr, size, what, ignore=()):
        """Reserves a range without writing it (e.g. memory a kernel needs later)."""
        self.check(addr, size, what, ignore)
        if size:
            self.used.append((addr, addr + size, what))

    # --- writing ---------------------------------------------------------------------
    def write(self, addr, data, what, memsize=None, ignore=()):
        """Claims [addr, addr+memsize) and writes `data` there; the rest reads as
        zero (GuestMemory.fill gives whole pages back instead of writing them)."""
        size = len(data) if memsize is None else memsize
        if size < len(data):
            raise LoaderError(f"{what} has more file bytes than memory bytes")
        self.claim(addr, size, what, ignore)
        if size:
            self.store(addr, data, size)
        return addr

    def write_parts(self, addr, parts, what, ignore=()):
        """Claims and writes byte strings one after another (a module and its
        command line) without joining them on the host first."""
        size = sum(len(part) for part in parts)
        self.claim(addr, size, what, ignore)
        offset = addr
        for part in parts:
            self.memory.write(offset, part)
            offset += len(part)
        if size:
            self.loaded.append((addr, size))
        return addr

    def store(self, addr, data, size=None):
        """Writes `data` into a range claimed before, zero-filling up to `size`."""
        size = len(data) if size is None else size
        self.memory.write(addr, data)
        if size > len(data):
            self.memory.fill(addr + len(data), size - len(data))
        self.loaded.append((addr, size))

    def write_kernel(self, pieces, what="the kernel"):
        """Writes [(addr, data, memsize)] of one image; its pieces may touch each other."""
        for addr, data, memsize in pieces:
            if memsize:
                self.write(addr, data, what, memsize, ignore=(what, *self.kernel_ignores))

    # --- pyvmm's own structures ----------------------------------------------------------
    def boot_data_windows(self):
        """Where a moved structure may go: conventional memory, then the RAM
        from 1 MiB up to the MMIO hole (so below 4 GiB)."""
        return (layout.BOOT_DATA_LOW, (layout.HIGH_MEMORY, memmap.low_ram_end(self.memory.size)))

    def free_place(self, size, what, default, align=8, windows=None):
        """`default` when [default, +size) is free, else the lowest free
        `align`-aligned address in `windows` (boot_data_windows()); LoaderError,
        naming what is in the way, when there is none."""
        windows = windows or self.boot_data_windows()
        if default is not None and self.is_free(default, size):
            return default
        addr = self.find_free(size, align, windows)
        if addr is None:
            raise LoaderError(self._no_room(what, size, windows))
        return addr

    def place(self, data, what, default, align=8, windows=None):
        """Writes `data` at free_place(); returns its address."""
        return self.write(self.free_place(len(data), what, default, align, windows), data, what)

    def reserve(self, size, what, default, align=8, windows=None):
        """Claims `size` bytes at free_place() without writing; returns the address."""
        addr = self.free_place(size, what, default, align, windows)
        self.claim(addr, size, what)
        return addr

    def find_free(self, size, align, windows):
        """The lowest `align`-aligned address with `size` free bytes of RAM, in
        the first of `windows` [(low, high)] that has one; None if none has."""
        for low, high in windows:
            for gap_start, gap_end in self._gaps(low, high):
                candidate = align_up(gap_start, align)
                if candidate + size <= gap_end and self.memory.contains(candidate, size):
                    return candidate
        return None

    def find_free_high(self, size, align, windows):
        """As find_free, but the highest such address (an initrd at the top of RAM)."""
        for low, high in windows:
            for gap_start, gap_end in reversed(self._gaps(low, high)):
                candidate = align_down(gap_end - size, align)
                if candidate >= gap_start and self.memory.contains(candidate, size):
                    return candidate
        return None

    def _gaps(self, low, high):
        """The free [start, end) ranges inside [low, high), in address order."""
        gaps, cursor = [], max(low, 0)
        for start, end, _what in sorted(self.used):
            if end <= cursor:
                continue
            if start >= high:
                break
            if start > cursor:
                gaps.append((cursor, start))
            cursor = end
        if cursor < high:
            gaps.append((cursor, high))
        return gaps

    def no_room(self, what, size, windows):
        """The LoaderError for `what` finding no free place in `windows`."""
        return LoaderError(self._no_room(what, size, windows))

    def _no_room(self, what, size, windows):
        windows = [(low, high) for low, high in windows if high > low]
        taken = sorted((start, end, other) for start, end, other in self.used
                       if any(start < high and low < end for low, high in windows))
        where = " and ".join(f"{low:#x}-{high:#x}" for low, high in windows)
        named = "; ".join(f"{other} ({start:#x}-{end:#x})" for start, end, other in taken[:8])
        more = f" and {len(taken) - 8} more" if len(taken) > 8 else ""
        return (f"no room for {what} ({size} bytes): {where} "
                f"{'are' if len(windows) > 1 else 'is'} taken by {named}{more}")

    def regions(self):
        """[(start, end, what)] of everything placed so far, firmware areas left out."""
        return [entry for entry in self.used if entry[2] not in _FIRMWARE]

    def boot_spec(self, format, mode, entry, regs=None, tables=None):
        return BootSpec(format=format, mode=mode, entry=entry, regs=regs, loaded=self.loaded,
                        tables=tables, regions=self.regions())

    # --- the pieces every protocol has --------------------------------------------------
    def place_entry_tables(self, mode, entry):
        """The GDT and IDT (protected, long), the identity page tables (long)
        and the boot stack, each at its usual address when free; writes the
        tables and returns the modes.EntryTables."""
        tables = modes.EntryTables()
        if mode != modes.REAL:
            tables = modes.EntryTables(
                gdt=self.reserve(layout.BOOT_GDT_SIZE, "pyvmm's GDT and IDT", layout.BOOT_GDT,
                                 align=16),
                page_tables=self.reserve(layout.PAGE_TABLES_SIZE, "pyvmm's page tables",
                                         layout.PML4, align=PAGE_SIZE)
                if mode == modes.LONG else layout.PML4)
        tables.stack = self._place_stack(mode, entry)
        for addr, blob, _what in modes.boot_table_blobs(mode, tables):
            self.store(addr, blob)
        return tables

    def _place_stack(self, mode, entry):
        what = "pyvmm's boot stack"
        usual = layout.BOOT_STACK_TOP - layout.STACK_TOP_OFFSET
        if mode != modes.REAL:
            return self.reserve(layout.STACK_SIZE, what, usual,
                                align=PAGE_SIZE) + layout.STACK_TOP_OFFSET
        # Real mode: SS:SP reaches 64 KiB from the segment base. pyvmm writes
        # nothing there, so a binary that leaves no free page in reach keeps
        # the usual SP (it sets its own stack, or it never fitted anyway).
        base = modes.real_mode_segment(entry) << 4
        window = (max(base, layout.BOOT_DATA_LOW[0]),
                  min(base + layout.REAL_MODE_SEGMENT, layout.BOOT_DATA_LOW[1]))
        page = base + usual
        if not self.is_free(page, layout.STACK_SIZE):
            page = self.find_free(layout.STACK_SIZE, PAGE_SIZE, [window])
            if page is None:
                return base + layout.BOOT_STACK_TOP
        self.claim(page, layout.STACK_SIZE, what)
        return page + layout.STACK_TOP_OFFSET

    def write_cmdline(self, text):
        """The kernel command line, at layout.CMDLINE when free; returns its address."""
        data = c_string(text, "the command line")
        if len(data) > layout.CMDLINE_MAX:
            raise LoaderError(f"the command line is {len(data) - 1} bytes "
                              f"(at most {layout.CMDLINE_MAX - 1})")
        return self.place(data, "the command line", layout.CMDLINE, align=16)


class InfoArea:
    """Builds a boot-information block whose pieces point at each other:
    add() appends a piece and returns its offset; once the block has an
    address, put() patches the pieces that hold addresses."""

    def __init__(self, limit=layout.BOOT_INFO_SIZE):
        self.limit = limit
        self.data = bytearray()

    def add(self, blob, align=8):
        offset = align_up(len(self.data), align)
        if offset + len(blob) > self.limit:
            raise LoaderError(f"the boot information needs more than the "
                              f"{self.limit} bytes pyvmm has for it")
        self.data.extend(b"\0" * (offset - len(self.data)))
        self.data.extend(blob)
        return offset

    def put(self, offset, blob):
        """Overwrites bytes added earlier (a header whose pointers are known last)."""
        if offset < 0 or offset + len(blob) > len(self.data):
            raise LoaderError(f"internal: boot information patch at offset {offset:#x} "
                              f"is outside the block")
        self.data[offset:offset + len(blob)] = blob

    def address(self, writer):
        """Where the block goes: layout.BOOT_INFO when free."""
        return writer.free_place(len(self.data), "the boot information", layout.BOOT_INFO)

    def write_to(self, writer, base):
        return writer.write(base, bytes(self.data), "the boot information")
