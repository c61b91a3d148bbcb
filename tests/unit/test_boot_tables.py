"""GDT descriptors and identity page tables, checked against the SDM's encodings."""

import struct

from hypothesis import given, strategies as st

from pyvmm.arch.x86_64 import gdt, layout, paging


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


def test_identity_tables_map_each_2mib_page_to_itself():
    tables = dict(paging.identity_tables())
    pml4 = struct.unpack("<Q", tables[layout.PML4])[0]
    assert pml4 & ~0xFFF == layout.PDPT and pml4 & 3 == 3
    pdpt = struct.unpack("<4Q", tables[layout.PDPT])
    assert [entry & ~0xFFF for entry in pdpt] == [layout.PAGE_DIRECTORIES + i * 0x1000 for i in range(4)]
    directories = struct.unpack("<2048Q", tables[layout.PAGE_DIRECTORIES])
    for index, entry in enumerate(directories):
        assert entry & ~0xFFF == index * paging.TWO_MIB
        assert entry & 0x83 == 0x83   # present, writable, 2 MiB page


def test_boot_structures_do_not_overlap():
    spans = [(layout.BOOT_GDT, 8 * 5), (layout.BOOT_IDT, 8), (layout.PML4, 0x1000),
             (layout.PDPT, 0x1000), (layout.PAGE_DIRECTORIES, 0x4000)]
    spans.sort()
    for (start, size), (next_start, _) in zip(spans, spans[1:]):
        assert start + size <= next_start
    assert spans[-1][0] + spans[-1][1] <= layout.RESERVED_LOW[1]
    assert layout.RESERVED_LOW[1] <= layout.BOOT_STACK_TOP - 0x1000 + 0x10
