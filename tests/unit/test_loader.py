"""Loaders place images only inside guest RAM, or fail with a clear LoaderError."""

import struct

import pytest
from hypothesis import given, settings, strategies as st

from pyvmm import guests
from pyvmm.arch.x86_64 import layout
from pyvmm.loader import LoaderError, LoadOptions, detect, elf, load_kernel, raw
from pyvmm.loader.common import FIRMWARE_AREAS
from pyvmm.memory import GuestMemory

MIB = 1 << 20


@pytest.fixture(scope="module")
def memory():
    with GuestMemory([(0, 4 * MIB)]) as mem:
        yield mem


def make_elf64(segments, entry=0x200000, machine=elf.EM_X86_64, e_type=elf.ET_EXEC):
    """A minimal ELF64 with PT_LOAD segments [(paddr, data, memsz)]."""
    phoff, phentsize = 64, 56
    offset = phoff + phentsize * len(segments)
    headers, blobs = b"", b""
    for paddr, data, memsz in segments:
        headers += struct.pack("<IIQQQQQQ", elf.PT_LOAD, 5, offset + len(blobs), paddr, paddr,
                               len(data), memsz, 0x1000)
        blobs += data
    ident = b"\x7fELF" + bytes([2, 1, 1]) + b"\0" * 9
    header = struct.pack("<16sHHIQQQIHHHHHH", ident, e_type, machine, 1, entry, phoff, 0, 0, 64,
                         phentsize, len(segments), 64, 0, 0)
    return header + headers + blobs


def kernel_ranges(spec):
    return [(start, end) for start, end, what in spec.regions if what == "the kernel"]


def assert_boot_data_clear(memory, spec):
    """pyvmm's structures: in RAM, clear of the kernel, the firmware areas and each other."""
    kernel = kernel_ranges(spec)
    others = [region for region in spec.regions if region[2] != "the kernel"]
    for index, (start, end, what) in enumerate(others):
        assert memory.contains(start, end - start), what
        for other_start, other_end, other in others[index + 1:] + [
                (s, e, "the kernel") for s, e in kernel] + list(FIRMWARE_AREAS):
            assert end <= other_start or other_end <= start, (what, other)


def test_elf64_segments_land_at_their_physical_address_with_bss_zeroed(memory):
    memory.fill(0x200000, 0x3000, 0xEE)
    spec = load_kernel(make_elf64([(0x200000, b"code", 0x1000), (0x202000, b"data", 0x800)]),
                       memory)
    assert (spec.mode, spec.entry, spec.format) == ("long", 0x200000, "elf64")
    assert memory.read(0x200000, 4) == b"code"
    assert memory.read(0x200004, 0x1000 - 4) == b"\0" * (0x1000 - 4)
    assert memory.read(0x202000, 4) == b"data"
    assert kernel_ranges(spec) == [(0x200000, 0x201000), (0x202000, 0x202800)]
    assert spec.loaded[:2] == [(0x200000, 0x1000), (0x202000, 0x800)]
    # The tables at their usual places, written by the loader too.
    assert (spec.tables.gdt, spec.tables.page_tables, spec.tables.stack) == \
        (layout.BOOT_GDT, layout.PML4, layout.BOOT_STACK_TOP)
    assert (layout.BOOT_GDT, layout.BOOT_GDT_SIZE) in spec.loaded
    assert memory.read(layout.PML4, 8) == (layout.PDPT | 3).to_bytes(8, "little")


def test_elf64_over_the_usual_boot_tables_moves_them(memory):
    spec = load_kernel(make_elf64([(0x500, b"\xf4" * 16, 0x9000)], entry=0x500), memory)
    assert kernel_ranges(spec) == [(0x500, 0x9500)]
    assert spec.tables.gdt == 0x9500                          # first free, 16-aligned
    assert spec.tables.page_tables == 0xA000                  # first free page
    assert spec.tables.stack == 0x10000 + layout.STACK_TOP_OFFSET
    assert_boot_data_clear(memory, spec)
    pml4 = memory.read_u64(spec.tables.page_tables)
    assert pml4 & ~0xFFF == spec.tables.page_tables + 0x1000


def test_bundled_elf_guest_is_detected_and_loaded(memory):
    image = open(guests.path("compute.elf"), "rb").read()
    assert detect(image) is elf
    assert load_kernel(image, memory).mode == "long"


@pytest.mark.parametrize("image, message", [
    (make_elf64([(0x200000, b"x", 1)], machine=40), "not x86"),
    (make_elf64([(0x200000, b"x", 1)], e_type=3), "not an executable"),
    (make_elf64([]), "no loadable segment"),
    (make_elf64([(0x3FFFFF, b"xy", 2)]), "does not fit"),
    (make_elf64([(0x200000, b"x", 1)], entry=1 << 40), "above 4 GiB"),
    (make_elf64([(0x200000, b"xyz", 1)]), "filesz > memsz"),
    (make_elf64([(0x200000, b"x", 1)])[:80], "past the end"),
    (b"\x7fELF" + b"\x09" * 60, "class"),
])
def test_bad_elf_is_refused_with_a_reason(memory, image, message):
    with pytest.raises(LoaderError, match=message):
        load_kernel(image, memory)


@settings(max_examples=300)
@given(data=st.data())
def test_mutated_elf_loads_or_fails_cleanly_within_ram(memory, data):
    image = bytearray(open(guests.path("compute.elf"), "rb").read())
    for _ in range(data.draw(st.integers(1, 8))):
        position = data.draw(st.integers(0, min(len(image), 256) - 1))
        image[position] = data.draw(st.integers(0, 255))
    try:
        spec = load_kernel(bytes(image), memory)
    except LoaderError as error:
        assert str(error)
    else:
        for addr, size in spec.loaded:
            assert memory.contains(addr, size)
        assert_boot_data_clear(memory, spec)


@given(mode=st.sampled_from(["real", "protected", "long"]),
       load_addr=st.integers(0, 8 * MIB), size=st.integers(1, 2 * MIB))
def test_raw_image_is_placed_or_refused(memory, mode, load_addr, size):
    options = LoadOptions(raw_mode=mode, load_addr=load_addr)
    try:
        spec = load_kernel(b"\x90" * size, memory, options)
    except LoaderError:
        fits = memory.contains(load_addr, size)
        assert not fits or (mode == "real" and load_addr + size > MIB)
    else:
        assert memory.contains(load_addr, size)
        assert (spec.mode, spec.entry) == (mode, load_addr)
        assert kernel_ranges(spec) == [(load_addr, load_addr + size)]
        assert_boot_data_clear(memory, spec)


def test_raw_defaults_per_mode(memory):
    assert load_kernel(b"\xf4", memory, LoadOptions(raw_mode="real")).entry == layout.REAL_MODE_LOAD
    spec = load_kernel(b"\xf4", memory, LoadOptions(raw_mode="long", entry=0x100010))
    assert (spec.entry, spec.loaded[0]) == (0x100010, (layout.HIGH_MEMORY, 1))


def test_unknown_format_and_empty_image():
    with pytest.raises(LoaderError, match="unknown kernel format"):
        detect(b"MZ not an elf")
    with pytest.raises(LoaderError, match="empty"):
        detect(b"")
    assert detect(b"anything", LoadOptions(raw_mode="real")) is raw
