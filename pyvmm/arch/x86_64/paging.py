"""Identity page tables for long-mode entry: [0, 4 GiB) with 2 MiB pages."""

import struct

from . import layout

PRESENT, WRITABLE, HUGE = 0x1, 0x2, 0x80
TWO_MIB = 2 << 20


def identity_tables():
    """[(guest address, bytes)] of PML4, PDPT and four page directories."""
    pml4 = struct.pack("<Q", layout.PDPT | PRESENT | WRITABLE)
    pdpt = b"".join(struct.pack("<Q", layout.PAGE_DIRECTORIES + i * 0x1000 | PRESENT | WRITABLE)
                    for i in range(4))
    directories = b"".join(struct.pack("<Q", page * TWO_MIB | PRESENT | WRITABLE | HUGE)
                           for page in range(layout.IDENTITY_MAPPED // TWO_MIB))
    return [(layout.PML4, pml4), (layout.PDPT, pdpt), (layout.PAGE_DIRECTORIES, directories)]
