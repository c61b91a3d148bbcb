"""Local APIC state at boot, as PC firmware leaves it."""

import struct

LVT_LINT0, LVT_LINT1 = 0x350, 0x360
DELIVERY_EXTINT, DELIVERY_NMI = 0x7, 0x4
MASKED = 1 << 16


def set_lint_as_firmware_does(regs):
    """LINT0 delivers the PIC's interrupts (ExtINT), LINT1 is NMI: kernels
    that use the 8259 PIC without programming the LAPIC expect this.
    `regs`: the LAPIC register page (a bytearray), changed in place."""
    for offset, mode in ((LVT_LINT0, DELIVERY_EXTINT), (LVT_LINT1, DELIVERY_NMI)):
        value = struct.unpack_from("<I", regs, offset)[0]
        value = (value & ~(0x700 | MASKED)) | mode << 8
        struct.pack_into("<I", regs, offset, value)
    return regs
