"""Every kernel loader, fed mutated images, loads them or raises LoaderError.

Seeds: the bundled guests (hello.bin, a multiboot a.out-kludge image;
mbinfo.elf, multiboot ELF, and mbinfo-low.elf, the same at 0x8000;
pvhinfo.elf, PVH; compute.elf, ELF64) and a
synthetic bzImage.  Mutations: bit flips, interesting bytes and 32-bit
words (mostly in the headers), truncation and appended junk; the load
options (command line, modules, initrd) are fuzzed too.  Each image goes
through load_kernel (format detection) and through every loader's load()
directly, into a GuestMemory that records every write.  Checks:

* the outcome is a BootSpec or a LoaderError with a message, never any other
  exception (GuestMemoryError, struct.error, IndexError ... are bugs);
* no write is ever attempted outside guest RAM;
* BootSpec.loaded lies inside guest RAM and covers every byte written;
* the entry point is one the entry mode can reach.
"""

import struct

import pytest
from hypothesis import currently_in_test_context, event, given, strategies as st

from pyvmm import guests
from pyvmm.arch.x86_64 import layout, modes
from pyvmm.loader import LoaderError, LoadOptions, bzimage, elf, load_kernel, multiboot, pvh, raw
from pyvmm.memory import GuestMemory
from pyvmm.testing import fuzz_settings

MIB = 1 << 20
LOADERS = {"bzimage": bzimage, "multiboot": multiboot, "pvh": pvh, "elf": elf, "raw": raw}


class RecordingMemory(GuestMemory):
    """GuestMemory that records every write attempt, in range or not."""

    def __init__(self, ranges):
        super().__init__(ranges)
        self.writes = []

    def _note(self, addr, length):
        self.writes.append((addr, length))

    def write(self, addr, data):
        self._note(addr, len(data))
        return super().write(addr, data)

    def fill(self, addr, length, byte=0):
        self._note(addr, length)
        return super().fill(addr, length, byte)

    def view(self, addr, length):  # writable: count it as a write
        self._note(addr, length)
        return super().view(addr, length)

    def write_u8(self, addr, value):
        self._note(addr, 1)
        return super().write_u8(addr, value)

    def write_u16(self, addr, value):
        self._note(addr, 2)
        return super().write_u16(addr, value)

    def write_u32(self, addr, value):
        self._note(addr, 4)
        return super().write_u32(addr, value)

    def write_u64(self, addr, value):
        self._note(addr, 8)
        return super().write_u64(addr, value)


@pytest.fixture(scope="module", params=[4 * MIB, 64 * MIB], ids=["4M", "64M"])
def memory(request):
    with RecordingMemory(layout.ram_ranges(request.param)) as mem:
        yield mem


def make_bzimage(setup_sects=4, version=0x020F, loadflags=0x01, xloadflags=0x03, relocatable=1,
                 alignment=0x200000, pref_address=0x1000000, init_size=0x400000,
                 initrd_addr_max=0x7FFFFFFF, cmdline_size=2047, kernel=b"\x7fKERNEL" * 64):
    """A synthetic bzImage (as tests/unit/test_bzimage.py builds one)."""
    setup = bytearray((setup_sects + 1) * 512)
    setup[0x1F1] = setup_sects
    struct.pack_into("<H", setup, 0x1FA, 0xFFFF)
    struct.pack_into("<H", setup, 0x1FE, 0xAA55)
    setup[0x200:0x202] = bytes([0xEB, 0x6A])
    setup[0x202:0x206] = b"HdrS"
    struct.pack_into("<H", setup, 0x206, version)
    setup[0x211] = loadflags
    struct.pack_into("<I", setup, 0x22C, initrd_addr_max)
    struct.pack_into("<I", setup, 0x230, alignment)
    setup[0x234] = relocatable
    struct.pack_into("<H", setup, 0x236, xloadflags)
    struct.pack_into("<I", setup, 0x238, cmdline_size)
    struct.pack_into("<Q", setup, 0x258, pref_address)
    struct.pack_into("<I", setup, 0x260, init_size)
    return bytes(setup) + kernel


def _read(name):
    with open(guests.path(name), "rb") as image:
        return image.read()


SEEDS = {
    "hello.bin": _read("hello.bin"),
    "mbinfo.elf": _read("mbinfo.elf"),
    "mbinfo-low.elf": _read("mbinfo-low.elf"),
    "pvhinfo.elf": _read("pvhinfo.elf"),
    "compute.elf": _read("compute.elf"),
    "bzImage": make_bzimage(),
    "bzImage-small": make_bzimage(relocatable=0, pref_address=0x100000, init_size=0x10000),
}
# Where each seed's headers are: mutations go there most of the time.
HOT_SPOTS = {
    "hello.bin": [(0, 0x40)],
    "mbinfo.elf": [(0, 0x34 + 4 * 32), (0x1000, 0x1040)],
    "mbinfo-low.elf": [(0, 0x34 + 4 * 32), (0x1000, 0x1040)],
    "pvhinfo.elf": [(0, 0x34 + 5 * 32)],
    "compute.elf": [(0, 0x40 + 3 * 56)],
    "bzImage": [(0x1F0, 0x270)],
    "bzImage-small": [(0x1F0, 0x270)],
}
INTERESTING_WORDS = [0, 1, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF, 0xFFFFFFF0, 0x1000, 0x100000,
                     0x200000, 0x1000000, 0x3FFFFF, 0x40, 0x20, 0x38, 0x1BADB002, 0xC0000000]


@st.composite
def mutated(draw, name):
    image = bytearray(SEEDS[name])
    hot = HOT_SPOTS[name]

    def position(width=1):
        if draw(st.integers(0, 9)) < 7:
            start, end = draw(st.sampled_from(hot))
            end = min(end, len(image))
        else:
            start, end = 0, len(image)
        if end - start < width:
            return None
        return draw(st.integers(start, end - width))

    for _ in range(draw(st.integers(1, 6))):
        op = draw(st.sampled_from(["flip", "byte", "word", "word", "truncate", "append"]))
        if op == "flip":
            at = position()
            if at is not None:
                image[at] ^= 1 << draw(st.integers(0, 7))
        elif op == "byte":
            at = position()
            if at is not None:
                image[at] = draw(st.sampled_from([0, 1, 0x7F, 0x80, 0xFF]) | st.integers(0, 255))
        elif op == "word":
            at = position(4)
            if at is not None:
                at &= ~3 if draw(st.booleans()) else ~0
                at = min(at, len(image) - 4)
                word = draw(st.sampled_from(INTERESTING_WORDS) | st.integers(0, 2**32 - 1))
                struct.pack_into("<I", image, at, word)
        elif op == "truncate":
            del image[draw(st.integers(0, len(image))):]
        else:
            image += draw(st.binary(max_size=64))
    return bytes(image)


texts = st.one_of(st.just(""), st.text(max_size=40),
                  st.binary(max_size=40).map(lambda b: b.decode("latin-1")))
load_options = st.builds(
    LoadOptions,
    cmdline=texts,
    kernel_path=st.one_of(st.none(), st.just("/boot/kernel")),
    modules=st.one_of(st.just([]), st.lists(st.tuples(texts, st.binary(max_size=300)), max_size=2)),
    initrd=st.one_of(st.none(), st.binary(max_size=300)),
    rsdp_addr=st.one_of(st.none(), st.just(0xF0000)),
)


def note(text):
    if currently_in_test_context():
        event(text)


def check_load(memory, load):
    """Runs `load()`; asserts the loader contract; returns the BootSpec or None."""
    memory.writes.clear()
    try:
        spec = load()
    except LoaderError as error:
        assert str(error), "a LoaderError without a message"
        note(f"LoaderError: {' '.join(str(error).split()[:3])}")
        spec = None
    for addr, length in memory.writes:
        assert memory.contains(addr, length), f"write attempted outside guest RAM: {length} at {addr:#x}"
    if spec is None:
        return None
    note(f"loaded as {spec.format}")
    for addr, size in spec.loaded:
        assert memory.contains(addr, size), f"BootSpec.loaded ({addr:#x}, {size:#x}) outside RAM"
    for addr, length in memory.writes:
        if length:
            assert any(start <= addr and addr + length <= start + size for start, size in spec.loaded), \
                f"wrote {length} bytes at {addr:#x}, outside BootSpec.loaded {spec.loaded}"
    assert spec.mode in modes.MODES
    if spec.mode == modes.REAL:
        assert 0 <= spec.entry < 1 << 20
    else:
        assert 0 <= spec.entry < 1 << 32, f"entry {spec.entry:#x} is not mapped at entry"
    return spec


def test_seeds_load(memory):
    for name, image in SEEDS.items():
        spec = check_load(memory, lambda: load_kernel(image, memory))
        if name == "bzImage" and memory.size < 20 * MIB:
            assert spec is None, "this bzImage needs memory up to 20 MiB while it starts"
        else:
            assert spec is not None, name


@pytest.mark.parametrize("name", list(SEEDS))
@fuzz_settings(max_examples=120)
@given(data=st.data())
def test_mutated_image_loads_or_raises_loader_error(memory, name, data):
    image = data.draw(mutated(name), label="image")
    options = data.draw(st.one_of(st.just(LoadOptions()), load_options), label="options")
    check_load(memory, lambda: load_kernel(image, memory, options))
    # Every loader directly, whatever the format (raw needs a mode).
    loader = data.draw(st.sampled_from(sorted(LOADERS)), label="loader")
    if loader == "raw":
        options.raw_mode = data.draw(st.sampled_from(modes.MODES), label="raw_mode")
        options.load_addr = data.draw(st.one_of(st.none(), st.integers(0, 2**33)), label="load_addr")
        options.entry = data.draw(st.one_of(st.none(), st.integers(0, 2**33)), label="entry")
    check_load(memory, lambda: LOADERS[loader].load(image, memory, options))


@fuzz_settings(max_examples=100)
@given(image=st.binary(max_size=600), loader=st.sampled_from(sorted(LOADERS)),
       raw_mode=st.sampled_from(modes.MODES))
def test_random_bytes_load_or_raise_loader_error(memory, image, loader, raw_mode):
    options = LoadOptions(raw_mode=raw_mode if loader == "raw" else None)
    check_load(memory, lambda: load_kernel(image, memory, options))
    check_load(memory, lambda: LOADERS[loader].load(image, memory, options))


@fuzz_settings(max_examples=100)
@given(data=st.data())
def test_random_headers_after_valid_magic(memory, data):
    """Random bytes behind each format's magic, so the parsers get past detection."""
    prefix = data.draw(st.sampled_from([
        b"\x7fELF\x01\x01\x01" + bytes(9), b"\x7fELF\x02\x01\x01" + bytes(9),
        struct.pack("<III", 0x1BADB002, 0x00010000, (-(0x1BADB002 + 0x00010000)) & 0xFFFFFFFF),
        struct.pack("<III", 0x1BADB002, 0, (-0x1BADB002) & 0xFFFFFFFF),
    ]), label="magic")
    body = data.draw(st.binary(min_size=0, max_size=400), label="body")
    image = prefix + body
    if data.draw(st.booleans(), label="as bzImage"):
        image = bytearray(make_bzimage())
        tail = data.draw(st.binary(min_size=0x268 - 0x206, max_size=0x268 - 0x206), label="header")
        image[0x206:0x268] = tail
        image = bytes(image)
    check_load(memory, lambda: load_kernel(image, memory))
