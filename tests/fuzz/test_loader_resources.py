"""Loading any image costs host memory in proportion to the image, and little time.

Images: the mutated seeds of test_loader_mutations (every format), plus
generated attacks on the loaders' resource use: zero-filled segments and
multiboot bss up to most of guest RAM, note areas described by thousands of
sections, modules and initrds. Each is loaded into 256 MiB of guest RAM in
a worker process (loader_worker.py) that reports the load's peak RSS rise
and its duration.

The bound: peak RSS rises by at most 2 x (image + modules + initrd) +
16 MiB, within 2 s. That is stricter than "a multiple of the input plus the
guest RAM": zero-filled memory must cost nothing (fresh guest RAM is
already zero), so no term for guest RAM is needed. RSS is the sound
measure here: tracemalloc sees only Python allocations, not the guest
pages a loader touches or memory allocated in C.
"""

import os
import pickle
import struct
import subprocess
import sys

import pytest
from hypothesis import event, given, strategies as st

from pyvmm.testing import fuzz_settings
from test_loader_mutations import SEEDS, load_options, make_bzimage, mutated

MIB = 1 << 20
RAM = 256 * MIB
SLACK = 16 * MIB
TIME_LIMIT = 2.0
WORKER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "loader_worker.py")
FRAME = struct.Struct("<I")


class Worker:
    def __init__(self):
        self.process = subprocess.Popen([sys.executable, WORKER], stdin=subprocess.PIPE,
                                        stdout=subprocess.PIPE)

    def load(self, image, options):
        fields = {name: getattr(options, name) for name in (
            "raw_mode", "load_addr", "entry", "cmdline", "kernel_path", "modules", "initrd",
            "rsdp_addr")}
        request = pickle.dumps((bytes(image), RAM, fields))
        self.process.stdin.write(FRAME.pack(len(request)) + request)
        self.process.stdin.flush()
        header = self.process.stdout.read(FRAME.size)
        assert len(header) == FRAME.size, "the loader worker died"
        (length,) = FRAME.unpack(header)
        return pickle.loads(self.process.stdout.read(length))

    def close(self):
        self.process.stdin.close()
        self.process.wait(30)
        self.process.stdout.close()


@pytest.fixture(scope="module")
def worker():
    process = Worker()
    for image in SEEDS.values():            # warm up: imports, caches, allocator arenas
        process.load(image, load_options_default())
    yield process
    process.close()


def load_options_default():
    from pyvmm.loader import LoadOptions
    return LoadOptions()


# --- generated attacks ----------------------------------------------------------------

def elf64_bss(paddr, filesz, memsz):
    header = struct.pack("<16sHHIQQQIHHHHHH", b"\x7fELF\x02\x01\x01" + bytes(9), 2, 62, 1,
                         paddr, 64, 0, 0, 64, 56, 1, 64, 0, 0)
    return header + struct.pack("<IIQQQQQQ", 1, 7, 120, paddr, paddr, filesz, memsz, 0x1000) \
        + b"\xf4" * filesz


def multiboot_bss(load, size, bss_end):
    magic, flags = 0x1BADB002, 1 << 16
    header = struct.pack("<III", magic, flags, -(magic + flags) & 0xFFFFFFFF)
    return header + struct.pack("<5I", load, load, 0, bss_end, load) + b"\xf4" * size


def note_sections(sections, area):
    ehsize, phsize, shsize = 64, 56, 64
    code_at = ehsize + phsize
    area_at = code_at + 16
    shoff = (area_at + area + 7) // 8 * 8
    header = struct.pack("<16sHHIQQQIHHHHHH", b"\x7fELF\x02\x01\x01" + bytes(9), 2, 62, 1,
                         0x100000, ehsize, shoff, 0, ehsize, phsize, 1, shsize, sections, 0)
    phdr = struct.pack("<IIQQQQQQ", 1, 5, code_at, 0x100000, 0x100000, 16, 16, 0x1000)
    section = struct.pack("<IIQQQQIIQQ", 0, 7, 0, 0, area_at, area, 0, 0, 4, 0)
    body = header + phdr + b"\xf4" * 16 + bytes(area)
    return body + bytes(shoff - len(body)) + section * sections


# Zero-filled sizes from a few bytes to most of guest RAM, in every order of magnitude.
big_sizes = st.integers(0, 27).flatmap(lambda bits: st.integers(1 << bits, 1 << (bits + 1))) \
    .filter(lambda size: size <= 200 * MIB)
attacks = st.one_of(
    st.builds(elf64_bss, paddr=st.sampled_from([0x1000, 0x100000, 0x2000000]),
              filesz=st.integers(0, 4096), memsz=big_sizes),
    st.builds(lambda load, size, bss: multiboot_bss(load, size, load + 32 + size + bss),
              load=st.sampled_from([0x8000, 0x100000, 0x400000]), size=st.integers(0, 4096),
              bss=big_sizes),
    st.builds(note_sections, sections=st.integers(1, 4096), area=st.integers(0, 64 << 10)),
)
sized_options = st.builds(
    lambda modules, initrd, cmdline: (modules, initrd, cmdline),
    modules=st.lists(st.integers(0, 4 * MIB), max_size=2),
    initrd=st.one_of(st.none(), st.integers(0, 8 * MIB)),
    cmdline=st.integers(0, 4096))


def check(worker, image, options):
    outcome, elapsed, peak = worker.load(image, options)
    inputs = len(image) + sum(len(data) for _name, data in options.modules) \
        + len(options.initrd or b"")
    event(outcome.split(":")[0] if outcome.startswith("LoaderError") else outcome)
    assert peak <= 2 * inputs + SLACK, \
        f"{outcome}: peak RSS rose {peak >> 20} MiB for {inputs >> 10} KiB of input"
    assert elapsed < TIME_LIMIT, f"{outcome}: took {elapsed:.2f} s"


@pytest.mark.parametrize("name", list(SEEDS) + ["bzImage-big-initrd"])
@fuzz_settings(max_examples=25, deadline=None)
@given(data=st.data())
def test_a_mutated_image_costs_memory_in_proportion_to_it(worker, name, data):
    options = data.draw(load_options, label="options")
    if name == "bzImage-big-initrd":
        image = make_bzimage()
        options.initrd = bytes(data.draw(st.integers(0, 16 * MIB), label="initrd size"))
    else:
        image = data.draw(mutated(name), label="image")
    check(worker, image, options)


@fuzz_settings(max_examples=40, deadline=None)
@given(image=attacks, sizes=sized_options, modules_or_initrd=st.booleans())
def test_generated_attacks_cost_memory_in_proportion_to_the_input(worker, image, sizes,
                                                                   modules_or_initrd):
    from pyvmm.loader import LoadOptions
    modules, initrd, cmdline = sizes
    options = LoadOptions(cmdline="x" * cmdline, kernel_path="/k")
    if modules_or_initrd:
        options.modules = [(f"m{index}", bytes([index + 1]) * size)
                           for index, size in enumerate(modules)]
    elif initrd is not None:
        options.initrd = b"\x1f" * initrd
    check(worker, image, options)
