"""Multiboot v1 as QEMU's -kernel loads it: header search, a.out kludge, ELF32, info structure."""

import struct

import pytest
from hypothesis import given, settings, strategies as st

from pyvmm import guests
from pyvmm.arch.x86_64 import layout, memmap
from pyvmm.loader import LoaderError, LoadOptions, detect, elf, load_kernel, multiboot
from pyvmm.loader.common import FIRMWARE_AREAS
from pyvmm.memory import GuestMemory

MIB = 1 << 20
RAM = 32 * MIB
MAGIC = 0x1BADB002
ADDRESS_FIELDS = 1 << 16


@pytest.fixture(scope="module")
def memory():
    with GuestMemory(layout.ram_ranges(RAM)) as mem:
        yield mem


def mb_header(flags, fields=()):
    header = struct.pack("<III", MAGIC, flags, -(MAGIC + flags) & 0xFFFFFFFF)
    return header + struct.pack(f"<{len(fields)}I", *fields)


def make_aout(code=b"\xf4" * 16, load_addr=0x100000, offset=4, load_end=0, bss_end=0,
              entry=None, header_addr=None):
    """A flat image with a multiboot header at `offset` using the address fields."""
    header_addr = load_addr + offset if header_addr is None else header_addr
    entry = load_addr if entry is None else entry
    fields = (header_addr, load_addr, load_end, bss_end, entry)
    return b"\x90" * offset + mb_header(ADDRESS_FIELDS, fields) + code


def make_elf32(segments, entry, machine=elf.EM_386, elf_class=elf.CLASS32, header=None):
    """An ELF with PT_LOAD segments [(paddr, vaddr, data, memsz, flags)] and a
    multiboot header (default: no address fields) right after the program headers."""
    if elf_class == elf.CLASS32:
        ehsize, phentsize, ehdr, phdr = 52, 32, "<16sHHIIIIIHHHHHH", "<IIIIIIII"
    else:
        ehsize, phentsize, ehdr, phdr = 64, 56, "<16sHHIQQQIHHHHHH", "<IIQQQQQQ"
    header = mb_header(0) if header is None else header
    offset = ehsize + phentsize * len(segments) + len(header)
    headers, blobs = b"", b""
    for paddr, vaddr, data, memsz, flags in segments:
        fields = (elf.PT_LOAD, offset + len(blobs), vaddr, paddr, len(data), memsz, flags, 4)
        if elf_class == elf.CLASS64:
            fields = (elf.PT_LOAD, flags, offset + len(blobs), vaddr, paddr, len(data), memsz, 4)
        headers += struct.pack(phdr, *fields)
        blobs += data
    ident = b"\x7fELF" + bytes([elf_class, 1, 1]) + b"\0" * 9
    return (struct.pack(ehdr, ident, elf.ET_EXEC, machine, 1, entry, ehsize, 0, 0, ehsize,
                        phentsize, len(segments), 40, 0, 0)
            + headers + header + blobs)


def info_field(memory, offset):
    return memory.read_u32(layout.BOOT_INFO + offset)


def c_string_at(memory, addr):
    data = memory.read(addr, 256)
    return data[:data.index(b"\0")].decode()


KERNEL_PARTS = {"the kernel", "the kernel (with its init_size)"}


def assert_placed_safely(memory, spec):
    """Everything inside RAM and outside the firmware areas; the kernel, the
    modules and each of pyvmm's structures clear of each other."""
    for addr, size in spec.loaded:
        assert memory.contains(addr, size)
        for start, end, _what in FIRMWARE_AREAS:
            assert addr + size <= start or end <= addr
    regions = spec.regions
    for index, (start, end, what) in enumerate(regions):
        for other_start, other_end, other in regions[index + 1:]:
            if what != other and not {what, other} <= KERNEL_PARTS:
                assert end <= other_start or other_end <= start, (what, other)


# --- the bundled guests ---------------------------------------------------------------

def test_bundled_hello_is_a_multiboot_aout_kernel(memory):
    image = open(guests.path("hello.bin"), "rb").read()
    assert detect(image) is multiboot
    spec = load_kernel(image, memory, LoadOptions(kernel_path="hello.bin"))
    assert (spec.format, spec.mode, spec.entry) == ("multiboot", "protected", 0x100000)
    assert spec.regs == {"rax": 0x2BADB002, "rbx": layout.BOOT_INFO}
    assert memory.read(0x100000, len(image)) == image
    assert c_string_at(memory, info_field(memory, 16)) == "hello.bin "


def test_raw_mode_still_wins_over_the_header(memory):
    image = open(guests.path("hello.bin"), "rb").read()
    assert load_kernel(image, memory, LoadOptions(raw_mode="protected")).format == "raw-protected"


# --- the info structure ------------------------------------------------------------------

def test_info_structure_fields_at_their_spec_offsets(memory):
    options = LoadOptions(cmdline="console=com1 debug", kernel_path="/boot/kernel.bin")
    load_kernel(make_aout(), memory, options)
    assert info_field(memory, 0) == 0x24F           # mem, boot dev, cmdline, mods, mmap, name
    assert info_field(memory, 4) == 639
    assert info_field(memory, 8) == (RAM - MIB) // 1024
    assert info_field(memory, 12) == 0x8000FFFF     # QEMU's boot device
    assert c_string_at(memory, info_field(memory, 16)) == "/boot/kernel.bin console=com1 debug"
    assert info_field(memory, 16) == layout.CMDLINE
    assert info_field(memory, 20) == 0               # mods_count
    assert c_string_at(memory, info_field(memory, 64)) == "pyvmm"
    # Unset fields stay zero: syms, drives, config table, APM, VBE.
    for offset in (28, 32, 36, 40, 52, 56, 60, 68, 72, 76, 80, 84):
        assert info_field(memory, offset) == 0


def test_mmap_entries_are_24_bytes_with_size_20_and_equal_memmap(memory):
    load_kernel(make_aout(), memory)
    entries = memmap.memory_map(RAM)
    length, addr = info_field(memory, 44), info_field(memory, 48)
    assert length == 24 * len(entries)
    assert layout.BOOT_INFO <= addr < layout.BOOT_INFO + layout.BOOT_INFO_SIZE
    decoded = [struct.unpack_from("<IQQI", memory.read(addr + 24 * i, 24))
               for i in range(len(entries))]
    assert [(base, size, kind) for _s, base, size, kind in decoded] == entries
    assert {size_field for size_field, *_ in decoded} == {20}


@pytest.mark.parametrize("path, args, expected", [
    ("k.bin", "", "k.bin "),               # QEMU: "%s %s", so a trailing space
    ("k.bin", "a b", "k.bin a b"),
    (None, "a b", "a b"),
    (None, "", ""),
])
def test_command_line_is_path_then_args_like_qemu(memory, path, args, expected):
    load_kernel(make_aout(), memory, LoadOptions(cmdline=args, kernel_path=path))
    assert c_string_at(memory, info_field(memory, 16)) == expected


def test_modules_are_page_aligned_after_the_kernel_with_their_strings(memory):
    image = make_aout(load_addr=0x200000, bss_end=0x203456)
    modules = [("initrd.img root=/dev/x", b"A" * 5000), ("m2", b""), ("m3 x", b"C" * 7)]
    spec = load_kernel(image, memory, LoadOptions(modules=modules))
    assert info_field(memory, 20) == 3
    mods = info_field(memory, 24)
    entries = [struct.unpack_from("<IIII", memory.read(mods + 16 * i, 16)) for i in range(3)]
    assert entries[0][0] == 0x204000                 # first page after the kernel's bss
    previous_end = 0x203456
    for (start, end, string, reserved), (name, data) in zip(entries, modules):
        assert start % 4096 == 0 and start >= previous_end
        assert end - start == len(data)
        assert memory.read(start, len(data)) == data
        assert c_string_at(memory, string) == name
        assert reserved == 0
        previous_end = string + len(name) + 1
    assert_placed_safely(memory, spec)


# --- a.out kludge ------------------------------------------------------------------------

def test_aout_loads_from_the_header_offset_with_bss_zeroed(memory):
    memory.fill(0x300000, 0x2000, 0xEE)
    # The header sits at file offset 0x20 but at 0x300010: the file's first
    # 0x10 bytes are skipped, and load_end_addr trims the tail.
    code = b"CODE" * 8 + b"TAIL"
    image = make_aout(code=code, load_addr=0x300000, offset=0x20, header_addr=0x300010,
                      load_end=0x300000 + 0x30 + 32, bss_end=0x301000, entry=0x300040)
    spec = load_kernel(image, memory)
    assert spec.entry == 0x300040
    assert memory.read(0x300000, 0x50) == image[0x10:0x60]
    assert memory.read(0x300050, 0x1000 - 0x50) == bytes(0x1000 - 0x50)
    assert memory.read_u8(0x301000) == 0xEE
    assert spec.loaded[0] == (0x300000, 0x1000)


@pytest.mark.parametrize("kwargs, message", [
    ({"header_addr": 0x0FFFFF}, "do not match"),
    ({"header_addr": 0x100100}, "do not match"),
    ({"load_end": 0x0FF000}, "below load_addr"),
    ({"load_end": 0x110000}, "more bytes than the file"),
    ({"bss_end": 0x100001}, "bss_end_addr"),
    ({"load_addr": 0xFFFFF000, "code": b"\0" * 0x2000}, "below 4 GiB"),
    ({"load_addr": 0x1F00000, "bss_end": 0x2100000}, "does not fit"),
    ({"load_addr": 0xA0000}, "VGA"),
    ({"load_addr": 0xF0000}, "ACPI"),
])
def test_bad_address_fields_are_refused(memory, kwargs, message):
    with pytest.raises(LoaderError, match=f"^multiboot: .*{message}"):
        load_kernel(make_aout(**kwargs), memory)


def test_truncated_address_fields_are_refused(memory):
    with pytest.raises(LoaderError, match="multiboot: .*address fields run past"):
        load_kernel(make_aout(code=b"")[:4 + 12 + 8], memory)


def test_header_search_follows_qemu():
    assert multiboot.find_header(b"\0" * 8 + mb_header(0)) == (8, 0)
    assert multiboot.find_header(b"\0" * 6 + mb_header(0)) is None          # not 4-aligned
    bad_sum = struct.pack("<III", MAGIC, 0, 0)
    assert multiboot.find_header(bad_sum) is None
    assert multiboot.find_header(b"\0" * 8140 + mb_header(0)) == (8140, 0)
    assert multiboot.find_header(b"\0" * 8144 + mb_header(0)) is None       # past QEMU's scan
    # A bad candidate does not hide a good one after it.
    assert multiboot.find_header(bad_sum + mb_header(3)) == (12, 3)


def test_a_later_module_overflowing_ram_is_refused(memory):
    with pytest.raises(LoaderError, match="multiboot: module 2 .* does not fit"):
        load_kernel(make_aout(), memory, LoadOptions(modules=[("a", b"x"), ("b", bytes(RAM))]))


@pytest.mark.parametrize("options, message", [
    (LoadOptions(initrd=b"x"), "multiboot kernels take no initrd; pass it as a multiboot module"),
    (LoadOptions(cmdline="a\0b"), "NUL"),
    (LoadOptions(modules=[("m\0", b"")]), "NUL"),
    (LoadOptions(cmdline="x" * layout.CMDLINE_MAX), "command line is"),
])
def test_bad_options_are_refused(memory, options, message):
    with pytest.raises(LoaderError, match=message):
        load_kernel(make_aout(), memory, options)


def test_a_low_kernel_over_the_command_line_moves_it(memory):
    image = make_aout(load_addr=0x10000, code=bytes(0x20000))
    spec = load_kernel(image, memory, LoadOptions(cmdline="low", kernel_path="k"))
    cmdline = memory.read_u32(spec.regs["rbx"] + 16)
    assert cmdline != layout.CMDLINE and c_string_at(memory, cmdline) == "k low"
    assert_placed_safely(memory, spec)


def test_a_kernel_at_0x8000_gets_its_info_elsewhere(memory):
    # The kernel the issue reported: 0x8000-0xda30 covers the usual stack
    # page and boot information block.
    image = make_aout(load_addr=0x8000, code=b"\xf4" * (0xDA30 - 0x8000 - 36), entry=0x8000)
    spec = load_kernel(image, memory, LoadOptions(modules=[("m1 x", b"M" * 5000)]))
    assert [(s, e) for s, e, what in spec.regions if what == "the kernel"] == [(0x8000, 0xDA30)]
    info = spec.regs["rbx"]
    assert not 0x8000 <= info < 0xDA30 and info < 0x9FC00      # real-mode reachable still
    assert spec.tables.gdt == layout.BOOT_GDT                   # free: unchanged
    assert not 0x7000 <= spec.tables.stack < 0xE000 and spec.tables.stack % 0x1000 == 0xFF0
    mods = memory.read_u32(info + 24)
    assert memory.read_u32(mods) == 0xE000                      # after the kernel, as in QEMU
    assert memory.read_u32(info + 48) > info                    # mmap follows the info
    assert_placed_safely(memory, spec)


# --- ELF ---------------------------------------------------------------------------------

def test_elf32_segments_load_at_paddr_and_the_entry_is_translated(memory):
    memory.fill(0x400000, 0x3000, 0xEE)
    image = make_elf32([(0x400000, 0xC0400000, b"text", 0x1000, elf.PF_X | 4),
                        (0x402000, 0xC0402000, b"data", 0x800, 6)], entry=0xC0400002)
    assert detect(image) is multiboot
    spec = load_kernel(image, memory, LoadOptions(modules=[("m", b"M")]))
    assert (spec.format, spec.mode, spec.entry) == ("multiboot", "protected", 0x400002)
    assert memory.read(0x400000, 8) == b"text\0\0\0\0"
    assert memory.read(0x402000, 8) == b"data\0\0\0\0"
    mods = info_field(memory, 24)
    assert memory.read_u32(mods) == 0x403000         # after the last segment's memsz


def test_elf32_entry_outside_segments_is_kept(memory):
    image = make_elf32([(0x400000, 0x400000, b"text", 0x1000, elf.PF_X)], entry=0x400010)
    assert load_kernel(image, memory).entry == 0x400010


def test_elf64_without_address_fields_is_refused_like_qemu(memory):
    image = make_elf32([(0x400000, 0x400000, b"t", 1, elf.PF_X)], entry=0x400000,
                       machine=elf.EM_X86_64, elf_class=elf.CLASS64)
    assert detect(image) is multiboot                # a multiboot header wins over plain ELF
    with pytest.raises(LoaderError, match="multiboot: a 64-bit ELF cannot be booted"):
        load_kernel(image, memory)


def test_address_fields_win_over_elf_headers(memory):
    # As in QEMU: flag 16 means the file is loaded by the address fields, ELF or not.
    header_at = 64 + 56                               # after the ELF64 header and one phdr
    fields = (0x500000 + header_at, 0x500000, 0, 0, 0x500000)
    image = make_elf32([(0x400000, 0x400000, b"t", 1, elf.PF_X)], entry=0x400000,
                       machine=elf.EM_X86_64, elf_class=elf.CLASS64,
                       header=mb_header(ADDRESS_FIELDS, fields))
    spec = load_kernel(image, memory)
    assert memory.read(0x500000, len(image)) == image   # the whole file, headers and all
    assert spec.entry == 0x500000


def test_not_elf_and_no_address_fields_is_refused(memory):
    with pytest.raises(LoaderError, match="multiboot: .*not ELF"):
        load_kernel(b"\0" * 16 + mb_header(0) + b"\xf4", memory)


def test_broken_elf_errors_name_multiboot(memory):
    image = make_elf32([], entry=0x400000)
    with pytest.raises(LoaderError, match="^multiboot: ELF has no loadable segment"):
        load_kernel(image, memory)


# --- robustness ----------------------------------------------------------------------

@settings(max_examples=200, deadline=None)
@given(data=st.data())
def test_mutated_multiboot_images_load_or_fail_cleanly(memory, data):
    base = data.draw(st.sampled_from([
        open(guests.path("hello.bin"), "rb").read(),
        make_elf32([(0x400000, 0xC0400000, b"text" * 8, 0x1000, elf.PF_X)], entry=0xC0400000),
    ]))
    image = bytearray(base)
    for _ in range(data.draw(st.integers(1, 8))):
        position = data.draw(st.integers(0, min(len(image), 128) - 1))
        if data.draw(st.booleans()):
            image[position] ^= 1 << data.draw(st.integers(0, 7))
        else:
            image[position] = data.draw(st.integers(0, 255))
    modules = data.draw(st.lists(st.tuples(st.text(max_size=20), st.binary(max_size=64)),
                                 max_size=3))
    try:
        spec = load_kernel(bytes(image), memory, LoadOptions(modules=modules, cmdline="x"))
    except LoaderError as error:
        assert str(error) and "\n" not in str(error)
    else:
        assert_placed_safely(memory, spec)


@settings(max_examples=200, deadline=None)
@given(fields=st.lists(st.integers(0, 2**32 - 1), min_size=5, max_size=5),
       offset=st.sampled_from([0, 4, 64]), size=st.integers(0, 256))
def test_random_address_fields_load_or_fail_cleanly(memory, fields, offset, size):
    image = b"\0" * offset + mb_header(ADDRESS_FIELDS, fields) + b"\xf4" * size
    try:
        spec = load_kernel(image, memory)
    except LoaderError as error:
        assert str(error).startswith("multiboot: ")
    else:
        assert_placed_safely(memory, spec)
