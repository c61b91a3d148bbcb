"""pyvmm's boot structures move out of the kernel's way, wherever the kernel sits.

For every format, kernels are placed at many addresses, low ones above all
(QEMU runs multiboot kernels linked at 0x8000), with modules and command
lines. A kernel that fits in RAM (outside the firmware areas, for the boot
protocols) must load unless RAM truly has no room left for pyvmm's
structures; when it loads:

* the kernel's bytes are intact in guest memory, and so are the firmware
  tables wherever the kernel is not;
* pyvmm's structures lie in RAM, clear of the kernel, the modules, the
  firmware areas and each other;
* every pointer handed to the kernel (EBX/RSI, GDTR, CR3, RSP, the info
  structure's command line, memory map and module list) points into the
  structure it names.
"""

import struct

import pytest
from hypothesis import HealthCheck, event, example, given, settings, strategies as st

from pyvmm.arch.x86_64 import layout, modes
from pyvmm.loader import LoaderError, LoadOptions, load_kernel
from pyvmm.loader.common import FIRMWARE_AREAS
from pyvmm.memory import GuestMemory
from pyvmm.machine.builder import write_firmware_tables

MIB = 1 << 20
KIB = 1 << 10
CONVENTIONAL_END = layout.EBDA_START
# Everything pyvmm may need, alignment included, with a 4 KiB command line.
BOOT_DATA_ROOM = 128 * KIB
MB_MAGIC, MB_ADDRESS_FIELDS = 0x1BADB002, 1 << 16
XEN_PHYS32_ENTRY = 18
KERNEL = "the kernel"
BOOT_PROTOCOLS = ("multiboot", "multiboot-elf", "pvh")
PATTERN = bytes((i * 7 + 3) & 0xFF for i in range(251))
USUAL = {"pyvmm's GDT and IDT": layout.BOOT_GDT, "pyvmm's page tables": layout.PML4,
         "pyvmm's boot stack": layout.BOOT_STACK_TOP & ~0xFFF, "the boot information":
         layout.BOOT_INFO, "the command line": layout.CMDLINE}


def multiboot_aout(load, data, bss):
    header = struct.pack("<III", MB_MAGIC, MB_ADDRESS_FIELDS, -(MB_MAGIC + MB_ADDRESS_FIELDS)
                         & 0xFFFFFFFF)
    image = header + struct.pack("<5I", load, load, 0, load + 32 + len(data) + bss if bss else 0,
                                 load) + data
    return image, [(load, image[:32 + len(data)], 32 + len(data) + bss)]


def elf(elf_class, load, data, bss, note=b"", multiboot=False):
    """An ELF executable: one PT_LOAD of `data` + `bss` at `load`, then an
    optional PT_NOTE; a multiboot header (no address fields) after the headers."""
    wide = elf_class == 2
    ehsize, phsize = (64, 56) if wide else (52, 32)
    phnum = 2 if note else 1
    header_mb = struct.pack("<III", MB_MAGIC, 0, -MB_MAGIC & 0xFFFFFFFF) if multiboot else b""
    data_at = ehsize + phsize * phnum + len(header_mb)
    note_at = data_at + len(data)

    def phdr(p_type, offset, addr, filesz, memsz):
        if wide:
            return struct.pack("<IIQQQQQQ", p_type, 7, offset, addr, addr, filesz, memsz, 4)
        return struct.pack("<IIIIIIII", p_type, offset, addr, addr, filesz, memsz, 7, 4)

    headers = phdr(1, data_at, load, len(data), len(data) + bss)
    if note:
        headers += phdr(4, note_at, 0, len(note), len(note))
    ident = b"\x7fELF" + bytes([elf_class, 1, 1]) + bytes(9)
    fmt = "<16sHHIQQQIHHHHHH" if wide else "<16sHHIIIIIHHHHHH"
    image = (struct.pack(fmt, ident, 2, 62 if wide else 3, 1, load, ehsize, 0, 0, ehsize,
                         phsize, phnum, 64 if wide else 40, 0, 0)
             + headers + header_mb + data + note)
    return image, [(load, data, len(data) + bss)]


def xen_note(entry):
    return struct.pack("<III", 4, 4, XEN_PHYS32_ENTRY) + b"Xen\0" + struct.pack("<I", entry)


def build(kind, load, data, bss):
    """(image, LoadOptions.raw_mode, [(addr, bytes, memsz)] the kernel occupies)."""
    if kind == "multiboot":
        return (*multiboot_aout(load, data, bss),) + (None,)
    if kind == "multiboot-elf":
        return elf(1, load, data, bss, multiboot=True) + (None,)
    if kind == "pvh":
        return elf(1, load, data, bss, note=xen_note(load)) + (None,)
    if kind == "elf64":
        return elf(2, load, data, bss) + (None,)
    if kind == "elf32":
        return elf(1, load, data, bss) + (None,)
    mode = kind.split("-")[1]
    return data, [(load, data, len(data))], mode


def free_gaps(taken, low, high):
    """Sizes of the gaps in [low, high) between the (start, end) ranges `taken`."""
    gaps, cursor = [], low
    for start, end in sorted(taken):
        if start > cursor:
            gaps.append(min(start, high) - cursor)
        cursor = max(cursor, end)
        if cursor >= high:
            break
    if cursor < high:
        gaps.append(high - cursor)
    return [gap for gap in gaps if gap > 0]


kinds = st.sampled_from(["multiboot", "multiboot-elf", "pvh", "elf64", "elf32", "raw-real",
                         "raw-protected", "raw-long"])
low_addresses = st.one_of(
    st.integers(0, CONVENTIONAL_END // 16).map(lambda n: n * 16),
    st.sampled_from([0, 0x500, 0x1000, 0x7000, 0x7C00, 0x8000, 0x9000, 0x10000, 0x20000,
                     0x90000]),
    st.integers(MIB // 4096, 8 * MIB // 4096).map(lambda page: page * 4096))


@pytest.fixture(scope="module", params=[MIB, 2 * MIB, 16 * MIB], ids=["1M", "2M", "16M"])
def memory(request):
    with GuestMemory(layout.ram_ranges(request.param)) as mem:
        yield mem


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(kind=kinds, load=low_addresses, size=st.integers(1, 0x98000), bss=st.integers(0, 0x8000),
       modules=st.lists(st.integers(0, 16 * KIB), max_size=2), cmdline=st.integers(0, 4 * KIB),
       seed=st.integers(0, 255))
@example(kind="raw-protected", load=0, size=CONVENTIONAL_END, bss=0, modules=[], cmdline=0, seed=0)
@example(kind="multiboot", load=0x8000, size=0x5A30, bss=0, modules=[100], cmdline=9, seed=1)
def test_boot_data_moves_out_of_the_way_of_any_kernel(memory, kind, load, size, bss, modules,
                                                      cmdline, seed):
    data = (PATTERN * (size // len(PATTERN) + 2))[seed:seed + size]
    if kind.startswith("raw"):
        bss = 0
    image, pieces, raw_mode = build(kind, load, data, bss)
    module_data = [bytes([0x40 + index]) * length for index, length in enumerate(modules)]
    accepts_modules = kind in BOOT_PROTOCOLS
    options = LoadOptions(raw_mode=raw_mode, load_addr=load if raw_mode else None,
                          cmdline="c" * cmdline, kernel_path="k",
                          modules=[(f"m{index}", blob) for index, blob in enumerate(module_data)]
                          if accepts_modules else [])
    memory.fill(0, memory.size)
    write_firmware_tables(memory, 2)
    firmware_before = memory.read(layout.BIOS_AREA, layout.BIOS_AREA_END - layout.BIOS_AREA)

    kernel_start, kernel_end = load, max(addr + memsz for addr, _d, memsz in pieces)
    in_ram = memory.contains(kernel_start, kernel_end - kernel_start)
    over_firmware = kernel_start < layout.BIOS_AREA_END and kernel_end > layout.EBDA_START
    kernel_fits = in_ram and not (kind in BOOT_PROTOCOLS and over_firmware)
    if kind == "raw-real":
        kernel_fits = kernel_fits and kernel_end <= MIB
    try:
        spec = load_kernel(image, memory, options)
    except LoaderError as error:
        message = str(error)
        event("refused: no room" if "no room for" in message else "refused: the kernel")
        if not kernel_fits:
            return
        assert "no room for" in message, message
        # Refused only when RAM truly has no room: below 2 MiB of RAM and no
        # gap as big as everything pyvmm needs in conventional memory.
        assert memory.size < 2 * MIB, message
        taken = [(kernel_start, kernel_end)] + [(start, end) for start, end, _w in FIRMWARE_AREAS]
        assert max(free_gaps(taken, layout.BOOT_DATA_LOW[0], CONVENTIONAL_END), default=0) \
            < BOOT_DATA_ROOM + sum(modules), message
        return
    assert kernel_fits, f"loaded a kernel at {kernel_start:#x}-{kernel_end:#x} that does not fit"
    moved = [what for start, end, what in spec.regions if what in USUAL and start != USUAL[what]]
    event(f"loaded, {'moved ' + ', '.join(sorted(moved)) if moved else 'nothing moved'}")

    # The kernel is intact, and so are the firmware tables where it is not.
    for addr, blob, memsz in pieces:
        assert memory.read(addr, len(blob)) == blob
        assert memory.read(addr + len(blob), memsz - len(blob)) == bytes(memsz - len(blob))
    firmware_after = memory.read(layout.BIOS_AREA, len(firmware_before))
    for offset in range(0, len(firmware_before), 4096):
        page = layout.BIOS_AREA + offset
        if not (kernel_start < page + 4096 and page < kernel_end):
            assert firmware_after[offset:offset + 4096] == firmware_before[offset:offset + 4096]

    regions = spec.regions
    mine = [region for region in regions if region[2] != KERNEL]
    for index, (start, end, what) in enumerate(mine):
        assert memory.contains(start, end - start), what
        for other_start, other_end, other in mine[index + 1:] + list(FIRMWARE_AREAS) + [
                (kernel_start, kernel_end, KERNEL)]:
            assert end <= other_start or other_end <= start, \
                f"{what} {start:#x}-{end:#x} overlaps {other} {other_start:#x}-{other_end:#x}"
    check_pointers(memory, spec, kind, regions, module_data, cmdline)


def region_of(regions, addr, length=1):
    """The name of the region holding [addr, addr+length)."""
    for start, end, what in regions:
        if start <= addr and addr + length <= end:
            return what
    return None


def check_pointers(memory, spec, kind, regions, module_data, cmdline_length):
    tables = spec.tables
    if spec.mode != modes.REAL:
        assert region_of(regions, tables.gdt, layout.BOOT_GDT_SIZE) == "pyvmm's GDT and IDT"
        assert region_of(regions, tables.stack - 16, 16) == "pyvmm's boot stack"
    if spec.mode == modes.LONG:
        assert region_of(regions, tables.page_tables, layout.PAGE_TABLES_SIZE) == \
            "pyvmm's page tables"
    if spec.mode == modes.REAL:
        base = modes.real_mode_segment(spec.entry) << 4
        assert 0 < tables.stack - base <= 0xFFFF          # SP reaches it from SS
    if kind.startswith("multiboot"):
        info = spec.regs["rbx"]
        assert region_of(regions, info, 88) == "the boot information"
        cmdline = memory.read_u32(info + 16)
        assert region_of(regions, cmdline, cmdline_length + 3) == "the command line"
        assert memory.read(cmdline, cmdline_length + 3) == b"k " + b"c" * cmdline_length + b"\0"
        mmap_length, mmap_addr = memory.read_u32(info + 44), memory.read_u32(info + 48)
        assert region_of(regions, mmap_addr, mmap_length) == "the boot information"
        count, mods = memory.read_u32(info + 20), memory.read_u32(info + 24)
        assert count == len(module_data)
        for index, blob in enumerate(module_data):
            start, end = struct.unpack("<II", memory.read(mods + 16 * index, 8))
            assert start % 4096 == 0 and memory.read(start, end - start) == blob
    if kind == "pvh":
        info = spec.regs["rbx"]
        assert region_of(regions, info, 56) == "the boot information"
        fields = struct.unpack("<IIIIQQQQII", memory.read(info, 56))
        assert fields[0] == 0x336EC578
        assert region_of(regions, fields[5], cmdline_length + 1) == "the command line"
        assert region_of(regions, fields[7], 24 * fields[8]) == "the boot information"


@pytest.mark.parametrize("load", [0x500, 0x8000, 0x9000, 0x20000, 0x7C000])
def test_a_low_multiboot_kernel_is_entered_with_real_mode_reachable_info(load):
    with GuestMemory(layout.ram_ranges(32 * MIB)) as memory:
        image, _pieces = multiboot_aout(load, b"\xf4" * 0x5A00, 0)
        spec = load_kernel(image, memory, LoadOptions(cmdline="x"))
        assert spec.regs["rbx"] + 88 <= CONVENTIONAL_END
