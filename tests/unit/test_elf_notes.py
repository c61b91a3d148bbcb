"""ELF notes are read with a budget: a small image cannot make the loader build millions of notes.

The attack: many SHT_NOTE sections (or PT_NOTE segments) over one zero-filled
area. Every 12 zero bytes parse as an empty note, so an image of a few KiB
described 10^5-10^8 notes, all collected before the PVH note was looked for.
"""

import struct
import time
import tracemalloc

import pytest
from hypothesis import given, settings, strategies as st

from pyvmm.arch.x86_64 import layout
from pyvmm.loader import LoaderError, detect, elf, load_kernel, pvh
from pyvmm.memory import GuestMemory

MIB = 1 << 20
PVH_ENTRY = 0x100000


def xen_note(entry=PVH_ENTRY):
    return struct.pack("<III", 4, 4, pvh.XEN_ELFNOTE_PHYS32_ENTRY) + b"Xen\0" + \
        struct.pack("<I", entry)


def amplifying_elf(sections, zeros, notes_first=b""):
    """An ELF64 with one PT_LOAD at 1 MiB and `sections` SHT_NOTE sections,
    each over the same area: `notes_first` then `zeros` zero bytes."""
    area = notes_first + bytes(zeros)
    ehsize, phsize, shsize = 64, 56, 64
    load_at = ehsize + phsize
    code = b"\xf4" * 16
    area_at = load_at + len(code)
    shoff = area_at + len(area)
    shoff += -shoff % 8
    header = struct.pack("<16sHHIQQQIHHHHHH", b"\x7fELF\x02\x01\x01" + bytes(9), elf.ET_EXEC,
                         elf.EM_X86_64, 1, PVH_ENTRY, ehsize, shoff, 0, ehsize, phsize, 1,
                         shsize, sections, 0)
    phdr = struct.pack("<IIQQQQQQ", elf.PT_LOAD, 5, load_at, PVH_ENTRY, PVH_ENTRY, len(code),
                       len(code), 0x1000)
    section = struct.pack("<IIQQQQIIQQ", 0, elf.SHT_NOTE, 0, 0, area_at, len(area), 0, 0, 4, 0)
    body = header + phdr + code + area
    return body + bytes(shoff - len(body)) + section * sections


def measure(function, *args):
    """(result or the LoaderError, seconds, peak bytes allocated by Python)."""
    tracemalloc.start()
    started = time.perf_counter()
    try:
        result = function(*args)
    except LoaderError as error:
        result = error
    elapsed = time.perf_counter() - started
    _current, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return result, elapsed, peak


@pytest.fixture(scope="module")
def memory():
    with GuestMemory(layout.ram_ranges(16 * MIB)) as mem:
        yield mem


@pytest.mark.parametrize("sections, zeros", [(512, 16 << 10), (4096, 4 << 10), (8, 256 << 10)])
def test_many_note_sections_over_zeros_stay_cheap(memory, sections, zeros):
    image = amplifying_elf(sections, zeros)
    for function in (detect, pvh.probe, lambda image: load_kernel(image, memory)):
        _result, elapsed, peak = measure(function, image)
        assert peak < 4 * len(image) + MIB, f"{peak >> 10} KiB allocated for a " \
                                            f"{len(image) >> 10} KiB image"
        assert elapsed < 2.0


def test_the_pvh_note_is_found_first_and_the_rest_is_not_read(memory):
    image = amplifying_elf(4096, 64 << 10, notes_first=xen_note())
    (module, elapsed, peak) = measure(detect, image)
    assert module is pvh
    assert peak < MIB and elapsed < 1.0
    spec, elapsed, peak = measure(lambda: load_kernel(image, memory))
    assert (spec.format, spec.entry) == ("pvh", PVH_ENTRY)
    assert elapsed < 1.0


def test_too_many_notes_is_a_loader_error_and_not_pvh():
    image = amplifying_elf(1, (elf.MAX_NOTES + 1) * 12)
    with pytest.raises(LoaderError, match=f"more than {elf.MAX_NOTES} notes"):
        list(elf.iter_notes(image))
    assert not pvh.probe(image)
    assert detect(image) is elf


def test_too_many_note_bytes_is_a_loader_error():
    desc = elf.MAX_NOTE_BYTES // 2 - 12                     # two areas fit, three do not
    one_big_note = struct.pack("<III", 0, desc, 1)          # each area is one note
    image = amplifying_elf(3, desc, notes_first=one_big_note)
    assert len(list(elf.iter_notes(amplifying_elf(2, desc, notes_first=one_big_note)))) == 2
    with pytest.raises(LoaderError, match=f"note areas of more than {elf.MAX_NOTE_BYTES} bytes"):
        list(elf.iter_notes(image))


@settings(max_examples=50, deadline=None)
@given(sections=st.integers(1, 4096), zeros=st.integers(0, 64 << 10),
       pvh_first=st.booleans())
def test_note_parsing_is_bounded_for_any_section_count_and_area(sections, zeros, pvh_first):
    image = amplifying_elf(sections, zeros, notes_first=xen_note() if pvh_first else b"")
    module, elapsed, peak = measure(detect, image)
    assert module is (pvh if pvh_first else elf)
    assert peak < 4 * len(image) + MIB
    assert elapsed < 2.0
