"""PVH: the Xen PHYS32_ENTRY note, hvm_start_info v1, memmap and modules."""

import struct

import pytest
from hypothesis import given, settings, strategies as st

from pyvmm.arch.x86_64 import layout, memmap
from pyvmm.loader import LoaderError, LoadOptions, detect, elf, load_kernel, multiboot, pvh
from pyvmm.loader.common import FIRMWARE_AREAS
from pyvmm.memory import GuestMemory

MIB = 1 << 20
RAM = 32 * MIB
ENTRY = 0x1000850


@pytest.fixture(scope="module")
def memory():
    with GuestMemory(layout.ram_ranges(RAM)) as mem:
        yield mem


def note(name, note_type, desc, align=4):
    pad = lambda data: data + b"\0" * (-len(data) % align)
    return struct.pack("<III", len(name), len(desc), note_type) + pad(name) + pad(desc)


def xen_entry_note(entry=ENTRY, size=8):
    return note(b"Xen\0", pvh.XEN_ELFNOTE_PHYS32_ENTRY, entry.to_bytes(size, "little"))


def make_elf(notes=None, elf_class=elf.CLASS64, in_section=False, note_align=4,
             segments=((0x1000000, b"KERNEL", 0x2000),), entry=0xFFFFFFFF81000000):
    """An ELF executable with PT_LOAD segments [(paddr, data, memsz)] and a note
    area holding `notes`, described by a PT_NOTE segment or (in_section) only by
    an SHT_NOTE section."""
    notes = xen_entry_note() if notes is None else notes
    if elf_class == elf.CLASS64:
        ehsize, phsize, shsize = 64, 56, 64
        ehdr, phdr, shdr = "<16sHHIQQQIHHHHHH", "<IIQQQQQQ", "<IIQQQQIIQQ"
        machine, entry = elf.EM_X86_64, entry
    else:
        ehsize, phsize, shsize = 52, 32, 40
        ehdr, phdr, shdr = "<16sHHIIIIIHHHHHH", "<IIIIIIII", "<IIIIIIIIII"
        machine, entry = elf.EM_386, entry & 0xFFFFFFFF
    phnum = len(segments) + (0 if in_section else 1)
    data_at = ehsize + phsize * phnum
    notes_at = data_at + sum(len(data) for _p, data, _m in segments)
    shoff = notes_at + len(notes)

    def program_header(p_type, offset, addr, filesz, memsz, flags, align):
        if elf_class == elf.CLASS64:
            return struct.pack(phdr, p_type, flags, offset, addr | 0xFFFFFFFF80000000, addr,
                               filesz, memsz, align)
        return struct.pack(phdr, p_type, offset, addr, addr, filesz, memsz, flags, align)

    headers, offset = b"", data_at
    for paddr, data, memsz in segments:
        headers += program_header(elf.PT_LOAD, offset, paddr, len(data), memsz, 5, 0x1000)
        offset += len(data)
    if not in_section:
        headers += program_header(elf.PT_NOTE, notes_at, 0, len(notes), len(notes), 4, note_align)
    sections = b""
    if in_section:   # a null section, then the note section
        sections = bytes(shsize) + struct.pack(shdr, 1, elf.SHT_NOTE, 2, 0, notes_at, len(notes),
                                               0, 0, note_align, 0)
    ident = b"\x7fELF" + bytes([elf_class, 1, 1]) + b"\0" * 9
    header = struct.pack(ehdr, ident, elf.ET_EXEC, machine, 1, entry, ehsize,
                         shoff if in_section else 0, 0, ehsize, phsize, phnum, shsize,
                         2 if in_section else 0, 0)
    return (header + headers + b"".join(data for _p, data, _m in segments) + notes + sections)


def start_info(memory):
    names = ("magic version flags nr_modules modlist_paddr cmdline_paddr rsdp_paddr "
             "memmap_paddr memmap_entries reserved").split()
    return dict(zip(names, pvh.START_INFO.unpack(memory.read(layout.BOOT_INFO, 56))))


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


# --- the note ---------------------------------------------------------------------------

@pytest.mark.parametrize("elf_class", [elf.CLASS32, elf.CLASS64])
@pytest.mark.parametrize("in_section", [False, True])
@pytest.mark.parametrize("size", [4, 8])
def test_the_entry_note_is_found_in_segments_or_sections(elf_class, in_section, size):
    notes = (note(b"GNU\0", 3, b"\1" * 20) + note(b"Xen\0", 6, b"linux\0")
             + xen_entry_note(size=size))
    image = make_elf(notes, elf_class=elf_class, in_section=in_section)
    assert pvh.phys32_entry(image) == ENTRY
    assert detect(image) is pvh


def test_eight_byte_aligned_note_areas_are_read_with_that_alignment():
    notes = note(b"Linux\0", 1, b"abc", align=8) + note(b"Xen\0", 18, b"\x50\x08\0\x01", align=8)
    assert pvh.phys32_entry(make_elf(notes, note_align=8)) == ENTRY


def test_elf_without_the_note_is_plain_elf():
    image = make_elf(note(b"Xen\0", 17, b"\0" * 4), entry=0x1000000)
    assert pvh.phys32_entry(image) is None
    assert detect(image) is elf


def test_multiboot_wins_over_pvh():
    image = bytearray(make_elf(entry=0x1000000))
    # A multiboot header inside the first segment's bytes.
    header = struct.pack("<III", 0x1BADB002, 0, -0x1BADB002 & 0xFFFFFFFF)
    at = image.index(b"KERNEL")
    image[at:at + 6] = b"\0\0\0\0\0\0"
    image = bytes(image[:at - at % 4]) + header + bytes(image[at - at % 4 + 12:])
    assert detect(image) is multiboot


@pytest.mark.parametrize("notes, message", [
    (note(b"Xen\0", 18, b"\1\2"), "holds 2 bytes"),
    (xen_entry_note(entry=1 << 32), "above 4 GiB"),
])
def test_bad_entry_notes_are_refused(memory, notes, message):
    with pytest.raises(LoaderError, match=f"^PVH: .*{message}"):
        load_kernel(make_elf(notes), memory)


def test_a_truncated_note_area_is_not_pvh():
    image = make_elf(xen_entry_note()[:-4])
    assert not pvh.probe(image)
    with pytest.raises(LoaderError, match="runs past"):
        elf.notes(image)


# --- start_info ------------------------------------------------------------------------

def test_start_info_layout_and_memmap(memory):
    spec = load_kernel(make_elf(), memory, LoadOptions(cmdline="console=ttyS0"))
    assert (spec.format, spec.mode, spec.entry) == ("pvh", "protected", ENTRY)
    assert spec.regs == {"rbx": layout.BOOT_INFO}
    assert pvh.START_INFO.size == 56
    info = start_info(memory)
    assert info["magic"] == 0x336EC578 and memory.read(layout.BOOT_INFO, 4) == b"\x78\xc5\x6e\x33"
    assert (info["version"], info["flags"], info["nr_modules"]) == (1, 0, 0)
    assert info["modlist_paddr"] == 0 and info["rsdp_paddr"] == 0 and info["reserved"] == 0
    assert info["cmdline_paddr"] == layout.CMDLINE
    assert c_string_at(memory, layout.CMDLINE) == "console=ttyS0"
    entries = memmap.memory_map(RAM)
    assert info["memmap_entries"] == len(entries)
    table = memory.read(info["memmap_paddr"], 24 * len(entries))
    assert [struct.unpack_from("<QQII", table, 24 * i) for i in range(len(entries))] == \
        [(addr, size, kind, 0) for addr, size, kind in entries]
    assert memory.read(0x1000000, 6) == b"KERNEL"
    assert memory.read(0x1000006, 0x2000 - 6) == bytes(0x2000 - 6)


def test_start_info_offsets_match_the_header_comment():
    packed = pvh.START_INFO.pack(1, 2, 3, 4, 5, 6, 7, 8, 9, 10)
    assert [struct.unpack_from("<I", packed, o)[0] for o in (0, 4, 8, 12)] == [1, 2, 3, 4]
    assert [struct.unpack_from("<Q", packed, o)[0] for o in (16, 24, 32, 40)] == [5, 6, 7, 8]
    assert [struct.unpack_from("<I", packed, o)[0] for o in (48, 52)] == [9, 10]
    assert pvh.MODLIST_ENTRY.size == 32 and pvh.MEMMAP_ENTRY.size == 24


def test_rsdp_address_is_passed_through(memory):
    load_kernel(make_elf(), memory, LoadOptions(rsdp_addr=0xE0000))
    assert start_info(memory)["rsdp_paddr"] == 0xE0000


def test_initrd_then_modules_go_page_aligned_to_the_top_of_ram(memory):
    initrd, modules = b"I" * 10000, [("mod1 a=1", b"M" * 300), ("mod2", b"")]
    spec = load_kernel(make_elf(), memory, LoadOptions(initrd=initrd, modules=modules))
    info = start_info(memory)
    assert info["nr_modules"] == 3
    entries = [pvh.MODLIST_ENTRY.unpack(memory.read(info["modlist_paddr"] + 32 * i, 32))
               for i in range(3)]
    (initrd_addr, initrd_size, initrd_cmdline, _), *rest = entries
    assert (initrd_size, initrd_cmdline) == (len(initrd), 0)
    assert initrd_addr == (RAM - len(initrd)) // 4096 * 4096
    assert memory.read(initrd_addr, len(initrd)) == initrd
    ceiling = initrd_addr
    for (addr, size, cmdline, reserved), (name, data) in zip(rest, modules):
        assert addr % 4096 == 0 and addr + size + len(name) + 1 <= ceiling
        assert size == len(data) and memory.read(addr, size) == data
        assert c_string_at(memory, cmdline) == name and reserved == 0
        ceiling = addr
    assert_placed_safely(memory, spec)


def test_modules_that_do_not_fit_are_refused(memory):
    with pytest.raises(LoaderError, match="^PVH: no room for the initrd .* taken by the kernel"):
        load_kernel(make_elf(), memory, LoadOptions(initrd=bytes(RAM - 16 * MIB)))
    with pytest.raises(LoaderError, match="^PVH: no room for module 1"):
        load_kernel(make_elf(), memory, LoadOptions(modules=[("big", bytes(RAM + 4096))]))


def test_kernel_segments_must_fit(memory):
    image = make_elf(segments=((RAM - 0x1000, b"x", 0x2000),))
    with pytest.raises(LoaderError, match="^PVH: the kernel .*does not fit"):
        load_kernel(image, memory)
    image = make_elf(segments=((0xA0000, b"x", 0x10),))
    with pytest.raises(LoaderError, match="^PVH: the kernel .*VGA hole"):
        load_kernel(image, memory)


def test_a_low_kernel_gets_its_start_info_and_stack_elsewhere(memory):
    image = make_elf(segments=((0x8000, b"x", 0x8000),))
    spec = load_kernel(image, memory, LoadOptions(cmdline="low"))
    assert not 0x8000 <= spec.regs["rbx"] < 0x10000
    assert not 0x8000 <= spec.tables.stack < 0x10000
    info = pvh.START_INFO.unpack(memory.read(spec.regs["rbx"], 56))
    assert info[0] == pvh.START_MAGIC and c_string_at(memory, info[5]) == "low"
    assert_placed_safely(memory, spec)


# --- robustness ----------------------------------------------------------------------

@settings(max_examples=300, deadline=None)
@given(data=st.data())
def test_mutated_pvh_images_load_or_fail_cleanly(memory, data):
    in_section = data.draw(st.booleans())
    image = bytearray(make_elf(in_section=in_section,
                               elf_class=data.draw(st.sampled_from([elf.CLASS32, elf.CLASS64]))))
    for _ in range(data.draw(st.integers(1, 8))):
        position = data.draw(st.integers(0, len(image) - 1))
        if data.draw(st.booleans()):
            image[position] ^= 1 << data.draw(st.integers(0, 7))
        else:
            image[position] = data.draw(st.integers(0, 255))
    options = LoadOptions(initrd=data.draw(st.one_of(st.none(), st.binary(max_size=64))))
    try:
        module = detect(bytes(image))
        spec = load_kernel(bytes(image), memory, options)
    except LoaderError as error:
        assert str(error) and "\n" not in str(error)
    else:
        assert module in (pvh, elf)
        assert_placed_safely(memory, spec)


@settings(max_examples=300)
@given(notes=st.binary(max_size=96), align=st.sampled_from([0, 4, 8, 16]))
def test_random_note_areas_parse_or_fail_cleanly(notes, align):
    image = make_elf(notes, note_align=align)
    try:
        found = elf.notes(image)
    except LoaderError:
        assert not pvh.probe(image)
    else:
        assert all(isinstance(name, bytes) for name, _type, _desc in found)
