"""GDT descriptors and the matching kvm_segment register state.

Selectors follow the Linux boot protocol: 0x10 is the code segment
(__BOOT_CS), 0x18 the data segment (__BOOT_DS).
"""

import struct

CODE_SELECTOR = 0x10
DATA_SELECTOR = 0x18
TSS_SELECTOR = 0x20

# Descriptor flags (the 12 bits above the limit): G, D/B, L, AVL, P, DPL, S, type.
CODE32 = 0xC09B   # G=1 D=1, present, code execute/read, accessed
CODE64 = 0xA09B   # G=1 L=1, present, code execute/read, accessed
DATA = 0xC093     # G=1 B=1, present, data read/write, accessed
TSS32 = 0x008B    # present, 32-bit busy TSS


def descriptor(flags, base, limit):
    """The 8-byte GDT entry for base/limit/flags (Intel SDM vol. 3, 3.4.5)."""
    return ((base & 0xFF000000) << 32 | (flags & 0xF0FF) << 40 | (limit & 0xF0000) << 32
            | (base & 0x00FFFFFF) << 16 | (limit & 0x0FFFF))


def segment(selector, flags, base, limit):
    """kvm_segment field values matching descriptor(flags, base, limit)."""
    granular = (flags >> 15) & 1
    return {
        "base": base,
        "limit": (limit << 12) | 0xFFF if granular else limit,
        "selector": selector,
        "type": flags & 0xF,
        "present": (flags >> 7) & 1,
        "dpl": (flags >> 5) & 3,
        "db": (flags >> 14) & 1,
        "s": (flags >> 4) & 1,
        "l": (flags >> 13) & 1,
        "g": granular,
        "avl": (flags >> 12) & 1,
        "unusable": 0,
    }


def boot_gdt(code_flags):
    """(table bytes, code segment, data segment, tss segment) for one entry mode."""
    entries = [
        0,                                   # null
        0,                                   # unused
        descriptor(code_flags, 0, 0xFFFFF),  # 0x10 code
        descriptor(DATA, 0, 0xFFFFF),        # 0x18 data
        descriptor(TSS32, 0, 0xFFFF),        # 0x20 TSS (KVM wants a usable TR)
    ]
    table = b"".join(struct.pack("<Q", entry) for entry in entries)
    return (table,
            segment(CODE_SELECTOR, code_flags, 0, 0xFFFFF),
            segment(DATA_SELECTOR, DATA, 0, 0xFFFFF),
            segment(TSS_SELECTOR, TSS32, 0, 0xFFFF))
