"""GDT descriptors and identity page tables, checked against the SDM's encodings."""

import struct

import pytest
from hypothesis import given, strategies as st

from pyvmm.arch.x86_64 import gdt, layout, modes, paging


def test_known_descriptors_match_the_sdm():
    # Flat 4 GiB segments as every boot loader writes them.
    assert gdt.descriptor(gdt.CODE32, 0, 0xFFFFF) == 0x00CF9B000000FFFF
    assert gdt.descriptor(gdt.CODE64, 0, 0xFFFFF) == 0x00AF9B000000FFFF
    assert gdt.descriptor(gdt.DATA, 0, 0xFFFFF) == 0x00CF93000000FFFF


@given(base=st.integers(0, 2**32 - 1), limit=st.integers(0, 0xFFFFF),
       flags=st.sampled_from([gdt.CODE32, gdt.CODE64, gdt.DATA, gdt.TSS32]))
def test_descriptor_fields_decode_back(base, limit, flags):
    entry = gdt.descriptor(flags, base, limit)
    decoded_base = (entry >> 16 & 0xFFFFFF) | (entry >> 56 & 0xFF) << 24
    decoded_limit = (entry & 0xFFFF) | (entry >> 48 & 0xF) << 16
    assert (decoded_base, decoded_limit) == (base, limit)
    assert entry >> 40 & 0xFF == flags & 0xFF
    assert entry >> 52 & 0xF == flags >> 12
    segment = gdt.segment(0x10, flags, base, limit)
    assert segment["limit"] == ((limit << 12 | 0xFFF) if flags & 0x8000 else limit)
    assert segment["l"] == (flags >> 13) & 1


@given(base=st.integers(0, (1 << 32) // 0x1000 - 6).map(lambda page: page * 0x1000))
def test_identity_tables_map_each_2mib_page_to_itself(base):
    tables = dict(paging.identity_tables(base))
    assert sorted(tables) == [base, base + 0x1000, base + 0x2000]
    assert sum(len(blob) for blob in tables.values()) <= layout.PAGE_TABLES_SIZE
    pml4 = struct.unpack("<Q", tables[base])[0]
    assert pml4 & ~0xFFF == base + 0x1000 and pml4 & 3 == 3
    pdpt = struct.unpack("<4Q", tables[base + 0x1000])
    assert [entry & ~0xFFF for entry in pdpt] == [base + 0x2000 + i * 0x1000 for i in range(4)]
    directories = struct.unpack("<2048Q", tables[base + 0x2000])
    for index, entry in enumerate(directories):
        assert entry & ~0xFFF == index * paging.TWO_MIB
        assert entry & 0x83 == 0x83   # present, writable, 2 MiB page


def test_the_usual_places_are_in_conventional_memory_and_do_not_overlap():
    spans = [(layout.BOOT_GDT, layout.BOOT_GDT_SIZE), (layout.PML4, layout.PAGE_TABLES_SIZE),
             (layout.ZERO_PAGE, 0x1000), (layout.BOOT_STACK_TOP & ~0xFFF, layout.STACK_SIZE),
             (layout.BOOT_INFO, layout.BOOT_INFO_SIZE), (layout.CMDLINE, layout.CMDLINE_MAX)]
    spans.sort()
    for (start, size), (next_start, _) in zip(spans, spans[1:]):
        assert start + size <= next_start
    low, high = layout.BOOT_DATA_LOW
    assert low <= spans[0][0] and spans[-1][0] + spans[-1][1] <= high
    assert layout.BOOT_IDT == layout.BOOT_GDT + modes.IDT_OFFSET
    assert layout.BOOT_STACK_TOP & 0xFFF == layout.STACK_TOP_OFFSET


@pytest.mark.parametrize("mode", ["protected", "long"])
def test_table_blobs_fill_exactly_their_blocks(mode):
    tables = modes.EntryTables(gdt=0x12340, page_tables=0x200000)
    blobs = modes.boot_table_blobs(mode, tables)
    gdt_blob = blobs[0]
    assert gdt_blob[0] == 0x12340 and len(gdt_blob[1]) == layout.BOOT_GDT_SIZE
    assert tables.idt == 0x12340 + modes.IDT_OFFSET
    assert gdt_blob[1][modes.IDT_OFFSET:] == bytes(8)            # the empty IDT
    if mode == "long":
        assert [addr for addr, _blob, _what in blobs[1:]] == [0x200000, 0x201000, 0x202000]
    else:
        assert len(blobs) == 1
    assert modes.boot_table_blobs("real", tables) == []
