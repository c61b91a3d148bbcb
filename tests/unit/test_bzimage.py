"""Linux bzImage by the 64-bit boot protocol: checks, placement, and the zero page."""

import struct

import pytest
from hypothesis import given, settings, strategies as st

from pyvmm.arch.x86_64 import layout, memmap
from pyvmm.loader import LoaderError, LoadOptions, bzimage, detect, load_kernel
from pyvmm.loader.common import FIRMWARE_AREAS
from pyvmm.memory import GuestMemory

MIB = 1 << 20
RAM = 64 * MIB
ZP = layout.ZERO_PAGE
KERNEL = b"\x7fKERNEL" + bytes(range(256)) * 8


@pytest.fixture(scope="module")
def memory():
    with GuestMemory(layout.ram_ranges(RAM)) as mem:
        yield mem


def make_bzimage(setup_sects=4, version=0x020F, loadflags=0x01, xloadflags=0x03,
                 relocatable=1, alignment=0x200000, pref_address=0x1000000,
                 init_size=0x400000, initrd_addr_max=0x7FFFFFFF, cmdline_size=2047,
                 jump=0x6A, boot_flag=0xAA55, kernel=KERNEL):
    """A fake bzImage: a boot sector and setup sectors with a setup header, then
    the protected-mode kernel."""
    setup = bytearray(((setup_sects or 4) + 1) * 512)
    setup[0x1F1] = setup_sects
    struct.pack_into("<H", setup, 0x1FA, 0xFFFF)        # vid_mode as built
    struct.pack_into("<H", setup, 0x1FE, boot_flag)
    setup[0x200:0x202] = bytes([0xEB, jump])
    setup[0x202:0x206] = b"HdrS"
    struct.pack_into("<H", setup, 0x206, version)
    setup[0x211] = loadflags
    struct.pack_into("<I", setup, 0x22C, initrd_addr_max)
    struct.pack_into("<I", setup, 0x230, alignment)
    setup[0x234] = relocatable
    setup[0x235] = 21
    struct.pack_into("<H", setup, 0x236, xloadflags)
    struct.pack_into("<I", setup, 0x238, cmdline_size)
    struct.pack_into("<Q", setup, 0x258, pref_address)
    struct.pack_into("<I", setup, 0x260, init_size)
    struct.pack_into("<I", setup, 0x264, 0x1234)         # handover_offset: copied as is
    struct.pack_into("<I", setup, 0x268, 0x5678)         # kernel_info_offset (2.15)
    return bytes(setup) + kernel


def u8(memory, offset):
    return memory.read_u8(ZP + offset)


def u16(memory, offset):
    return memory.read_u16(ZP + offset)


def u32(memory, offset):
    return memory.read_u32(ZP + offset)


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


def test_detected_by_the_hdrs_magic():
    image = make_bzimage()
    assert detect(image) is bzimage
    assert not bzimage.probe(image[:0x205])


def test_64_bit_entry_and_registers(memory):
    spec = load_kernel(make_bzimage(), memory)
    assert (spec.format, spec.mode) == ("bzImage", "long")
    assert spec.entry == 0x1000000 + 0x200                # pref_address + 0x200
    assert spec.regs == {"rsi": ZP}
    assert memory.read(0x1000000, len(KERNEL)) == KERNEL
    assert_placed_safely(memory, spec)


def test_zero_page_setup_header_and_loader_fields(memory):
    memory.fill(ZP, 4096, 0xEE)
    image = make_bzimage()
    load_kernel(image, memory, LoadOptions(cmdline="console=ttyS0 vga=ext"))
    header_end = 0x202 + 0x6A
    page = memory.read(ZP, 4096)
    written = {0x1FA, 0x1FB, 0x210, 0x211, *range(0x214, 0x218), 0x224, 0x225,
               *range(0x228, 0x22C)}
    for offset in range(0x1F1, header_end):               # the rest is the image's header
        if offset not in written:
            assert page[offset] == image[offset], hex(offset)
    assert page[header_end:0x290] == bytes(0x290 - header_end)   # past the header: zero
    assert page[:0x1E8] == bytes(0x1E8)                    # no rsdp, no ext_* fields
    assert u8(memory, 0x210) == 0xFF                       # type_of_loader: undefined
    assert u8(memory, 0x211) == 0x81    # LOADED_HIGH | CAN_USE_HEAP; KEEP_SEGMENTS is obsolete
    assert u16(memory, 0x224) == 0xE000 - 0x200            # heap_end_ptr
    assert u32(memory, 0x214) == 0x1000000                 # code32_start = load address
    assert u32(memory, 0x228) == layout.CMDLINE            # cmd_line_ptr
    assert memory.read(layout.CMDLINE, 26) == b"console=ttyS0 vga=ext\0" + bytes(4)
    assert u16(memory, 0x1FA) == 0xFFFE                    # vid_mode from vga=ext
    assert (u32(memory, 0x218), u32(memory, 0x21C)) == (0, 0)   # no initrd
    assert u16(memory, 0x1FE) == 0xAA55 and memory.read(ZP + 0x202, 4) == b"HdrS"


def test_e820_table_equals_the_memory_map(memory):
    load_kernel(make_bzimage(), memory)
    entries = memmap.memory_map(RAM)
    assert u8(memory, 0x1E8) == len(entries)
    table = memory.read(ZP + 0x2D0, 20 * len(entries))
    assert [struct.unpack_from("<QQI", table, 20 * i) for i in range(len(entries))] == entries
    assert memory.read(ZP + 0x2D0 + 20 * len(entries), 20) == bytes(20)


def test_rsdp_address_goes_to_the_zero_page(memory):
    load_kernel(make_bzimage(), memory, LoadOptions(rsdp_addr=0xE0000))
    assert memory.read_u64(ZP + 0x070) == 0xE0000


@pytest.mark.parametrize("cmdline, mode", [
    ("", 0xFFFF), ("vga=normal", 0xFFFF), ("vga=ask", 0xFFFD), ("vga=0x317", 0x317),
    ("quiet vga=791", 791), ("vga=bogus", 0xFFFF),
])
def test_video_mode_follows_vga_option(cmdline, mode):
    assert bzimage.video_mode(cmdline) == mode


def test_initrd_goes_page_aligned_to_the_top_of_low_ram(memory):
    initrd = b"\x30\x37\x30\x37" * 1000 + b"!"
    spec = load_kernel(make_bzimage(), memory, LoadOptions(initrd=initrd))
    addr, size = u32(memory, 0x218), u32(memory, 0x21C)
    assert size == len(initrd)
    assert addr % 4096 == 0 and addr == (RAM - len(initrd)) // 4096 * 4096
    assert memory.read(addr, size) == initrd
    assert_placed_safely(memory, spec)


def test_initrd_stays_below_initrd_addr_max(memory):
    initrd = bytes(100000)
    load_kernel(make_bzimage(initrd_addr_max=0x2FFFFFF), memory, LoadOptions(initrd=initrd))
    addr = u32(memory, 0x218)
    assert addr + len(initrd) - 1 <= 0x2FFFFFF
    assert addr == (0x3000000 - len(initrd)) // 4096 * 4096


def test_initrd_that_does_not_fit_above_the_kernel_is_refused(memory):
    options = LoadOptions(initrd=bytes(RAM - 0x1400000 + 1))      # kernel needs 16..20 MiB
    with pytest.raises(LoaderError, match="^bzImage: the initrd .* does not fit"):
        load_kernel(make_bzimage(), memory, options)


def test_kernel_goes_to_1mib_when_not_relocatable(memory):
    spec = load_kernel(make_bzimage(relocatable=0, pref_address=0x1000000), memory)
    assert spec.entry == 0x100200
    assert u32(memory, 0x214) == 0x100000
    assert memory.read(0x100000, len(KERNEL)) == KERNEL


def test_kernel_goes_to_1mib_when_pref_address_is_misaligned(memory):
    assert load_kernel(make_bzimage(pref_address=0x1001000), memory).entry == 0x100200


def test_kernel_needing_more_than_guest_ram_is_refused(memory):
    with pytest.raises(LoaderError, match="^bzImage: the kernel needs memory up to 0x5000000"):
        load_kernel(make_bzimage(init_size=0x4000000), memory)


@pytest.mark.parametrize("kwargs, message", [
    ({"xloadflags": 0x00}, "32-bit kernel"),
    ({"version": 0x020B}, r"protocol 2\.11 is older than 2\.12"),
    ({"loadflags": 0x00}, "zImage"),
    ({"boot_flag": 0x1234}, "boot_flag"),
    ({"jump": 0x20}, "setup header would end"),
    ({"jump": 0xF0}, "setup header would end"),
    ({"kernel": b""}, "no protected-mode kernel"),
    ({"alignment": 0x300000}, "not a power of two"),
    ({"alignment": 0}, "not a power of two"),
])
def test_bad_images_are_refused_with_a_reason(memory, kwargs, message):
    with pytest.raises(LoaderError, match=f"^bzImage: .*{message}"):
        load_kernel(make_bzimage(**kwargs), memory)


def test_setup_sects_zero_means_four(memory):
    image = make_bzimage(setup_sects=0)
    assert len(image) == 5 * 512 + len(KERNEL)
    load_kernel(image, memory)
    assert memory.read(0x1000000, len(KERNEL)) == KERNEL


def test_truncated_header_is_refused(memory):
    with pytest.raises(LoaderError, match="^bzImage: the setup header is truncated"):
        load_kernel(make_bzimage()[:0x240], memory)


@pytest.mark.parametrize("options, message", [
    (LoadOptions(cmdline="x" * 2048), "2048 bytes; this kernel takes at most 2047"),
    (LoadOptions(modules=[("m", b"")]), "bzImage kernels take no modules; Linux takes its initrd"),
])
def test_bad_options_are_refused(memory, options, message):
    with pytest.raises(LoaderError, match=message):
        load_kernel(make_bzimage(), memory, options)


def test_a_2mib_guest_cannot_hold_a_kernel_that_runs_from_16mib():
    with GuestMemory(layout.ram_ranges(2 * MIB)) as small:
        with pytest.raises(LoaderError, match="give the guest more memory"):
            load_kernel(make_bzimage(init_size=0x200000), small)


@settings(max_examples=300, deadline=None)
@given(data=st.data())
def test_mutated_bzimages_load_or_fail_cleanly(memory, data):
    image = bytearray(make_bzimage())
    for _ in range(data.draw(st.integers(1, 8))):
        position = data.draw(st.integers(0x1F0, 0x270))
        if data.draw(st.booleans()):
            image[position] ^= 1 << data.draw(st.integers(0, 7))
        else:
            image[position] = data.draw(st.integers(0, 255))
    options = LoadOptions(initrd=data.draw(st.one_of(st.none(), st.binary(max_size=4096))),
                          cmdline=data.draw(st.text(max_size=40)).replace("\0", ""))
    try:
        spec = load_kernel(bytes(image), memory, options)
    except LoaderError as error:
        assert str(error) and "\n" not in str(error)
    else:
        assert_placed_safely(memory, spec)
        assert spec.mode == "long" and spec.regs == {"rsi": ZP}


@settings(max_examples=200)
@given(image=st.binary(max_size=1024))
def test_random_bytes_load_or_fail_cleanly(memory, image):
    try:
        spec = load_kernel(image, memory)
    except LoaderError as error:
        assert str(error)
    else:
        assert_placed_safely(memory, spec)
