"""Identity page tables for long-mode entry: [0, 4 GiB) with 2 MiB pages."""

import struct

from . import layout

PRESENT, WRITABLE, HUGE = 0x1, 0x2, 0x80
TWO_MIB = 2 << 20
PAGE = 0x1000


def identity_tables(base=layout.PML4):
    """[(guest address, bytes)] of PML4, PDPT and four page directories, in
    the layout.PAGE_TABLES_SIZE bytes from `base` (page-aligned) on."""
    if base % PAGE:
        raise ValueError(f"page tables at {base:#x} are not page-aligned")
    pdpt_at, directories_at = base + PAGE, base + 2 * PAGE
    pml4 = struct.pack("<Q", pdpt_at | PRESENT | WRITABLE)
    pdpt = b"".join(struct.pack("<Q", directories_at + i * PAGE | PRESENT | WRITABLE)
                    for i in range(4))
    directories = b"".join(struct.pack("<Q", page * TWO_MIB | PRESENT | WRITABLE | HUGE)
                           for page in range(layout.IDENTITY_MAPPED // TWO_MIB))
    return [(base, pml4), (pdpt_at, pdpt), (directories_at, directories)]
