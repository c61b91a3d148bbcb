"""A vCPU as after power-on, and where firmware resumes the OS after S3.

Power-on (Intel SDM vol. 3, 9.1.1, table 9-1; QEMU x86_cpu_reset; KVM's
kvm_vcpu_reset): real mode at F000:FFF0 (CS base 0xFFFF0000), CR0
0x60000010, other control registers, EFER and the general registers 0,
RFLAGS 2, GDTR and IDTR limit 0xFFFF, x87 and SSE in their FNINIT state,
DR6 0xFFFF0FF0, DR7 0x400, nothing pending, the local APIC enabled at
0xFEE00000 (BSP flag on vCPU 0) with its registers reset. What pyvmm's
boot "firmware" sets on top (VcpuBoot: MSRs, XCR0, LINT0/LINT1) is set
again, as firmware does on every start.

The boot vCPU then enters the OS's waking vector as firmware does on
resume (ACPI 6.3, 5.2.10 FACS): the 32-bit Firmware_Waking_Vector in real
mode with CS = vector >> 4 and IP = vector & 0xF (SeaBIOS's
FLATPTR_TO_SEG/OFFSET; data segments 0, CR0.CD/NW clear as SeaBIOS leaves
them); a non-zero X_Firmware_Waking_Vector instead in 32-bit protected mode
with paging off and flat 4 GiB segments (selectors 0x10 and 0x18; GDTR is
left at its reset value, the OS loads its own). The other vCPUs wait for
INIT/SIPI.
"""

import collections

from . import gdt, layout
from .modes import CR0_ET, CR0_PE, FPU_CONTROL_WORD, MXCSR_DEFAULT, PROTECTED, REAL, RFLAGS_RESERVED

CR0_NW, CR0_CD = 1 << 29, 1 << 30
CR0_RESET = CR0_CD | CR0_NW | CR0_ET
RESET_CS_SELECTOR, RESET_CS_BASE, RESET_RIP = 0xF000, 0xFFFF0000, 0xFFF0
SEGMENT_LIMIT = 0xFFFF
CODE_READ_ACCESSED, DATA_WRITE_ACCESSED, LDT_TYPE, TSS_BUSY_TYPE = 0xB, 0x3, 0x2, 0xB
DR6_RESET, DR7_RESET = 0xFFFF0FF0, 0x400
APIC_BASE_BSP, APIC_BASE_ENABLE = 1 << 8, 1 << 11

GENERAL_REGISTERS = ("rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rsp", "rbp",
                     "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15")
SEGMENTS = ("cs", "ds", "es", "fs", "gs", "ss")


class VcpuBoot(collections.namedtuple("VcpuBoot", "msrs xcrs lapic")):
    """What the builder gave one vCPU before it first ran: MSR values
    ({index: value}), XCRs ({index: value}) and the local APIC register
    page (bytes) with LINT0/LINT1 programmed as firmware does."""


def power_on(vcpu, boot, bsp, entry=None):
    """Puts `vcpu` in its power-on state (the boot vCPU when `bsp`), with
    `boot` (a VcpuBoot) applied as at its first start. The boot vCPU runs
    from `entry` (a WakingVector), or from the reset vector without one;
    the others wait for INIT/SIPI (acpi.waking_vector reads the FACS).
    In QEMU's order (kvm_arch_put_registers):
    registers, FPU, XCRs, segments and control registers, MSRs, MP state,
    LAPIC, events, debug registers."""
    regs = vcpu.get_regs()
    for name in GENERAL_REGISTERS:
        setattr(regs, name, 0)
    regs.rip, regs.rflags = RESET_RIP, RFLAGS_RESERVED
    sregs = vcpu.get_sregs()
    _reset_sregs(sregs, bsp)
    if bsp and entry is not None:
        _enter(regs, sregs, entry)
    vcpu.set_regs(regs)

    fpu = vcpu.get_fpu()
    for register in range(8):
        fpu.fpr[register][0:16] = [0] * 16
    for register in range(16):
        fpu.xmm[register][0:16] = [0] * 16
    fpu.fcw, fpu.fsw, fpu.ftwx = FPU_CONTROL_WORD, 0, 0     # ftwx 0: every register empty
    fpu.last_opcode = fpu.last_ip = fpu.last_dp = 0
    fpu.mxcsr = MXCSR_DEFAULT
    vcpu.set_fpu(fpu)
    if boot.xcrs:
        vcpu.set_xcrs(boot.xcrs)
    vcpu.set_sregs(sregs)              # before the LAPIC: it sets the APIC base and mode
    vcpu.set_msrs(boot.msrs)
    vcpu.set_mp_state("runnable" if bsp else "uninitialized")
    vcpu.set_lapic(boot.lapic)
    vcpu.clear_vcpu_events()
    debugregs = vcpu.get_debugregs()
    debugregs.db = [0, 0, 0, 0]
    debugregs.dr6, debugregs.dr7 = DR6_RESET, DR7_RESET
    vcpu.set_debugregs(debugregs)


def _reset_sregs(sregs, bsp):
    for name in SEGMENTS:
        _set_segment(getattr(sregs, name), selector=0, base=0, limit=SEGMENT_LIMIT,
                     type=DATA_WRITE_ACCESSED, present=1, dpl=0, db=0, s=1, l=0, g=0, avl=0, unusable=0)
    _set_segment(sregs.cs, selector=RESET_CS_SELECTOR, base=RESET_CS_BASE, type=CODE_READ_ACCESSED)
    _set_segment(sregs.ldt, selector=0, base=0, limit=SEGMENT_LIMIT, type=LDT_TYPE, present=1,
                 dpl=0, db=0, s=0, l=0, g=0, avl=0, unusable=0)
    _set_segment(sregs.tr, selector=0, base=0, limit=SEGMENT_LIMIT, type=TSS_BUSY_TYPE, present=1,
                 dpl=0, db=0, s=0, l=0, g=0, avl=0, unusable=0)
    for table in (sregs.gdt, sregs.idt):
        table.base, table.limit = 0, SEGMENT_LIMIT
    sregs.cr0, sregs.cr2, sregs.cr3, sregs.cr4, sregs.cr8, sregs.efer = CR0_RESET, 0, 0, 0, 0, 0
    sregs.apic_base = layout.LAPIC_BASE | APIC_BASE_ENABLE | (APIC_BASE_BSP if bsp else 0)
    for index in range(len(sregs.interrupt_bitmap)):
        sregs.interrupt_bitmap[index] = 0           # no interrupt waiting for injection


def _enter(regs, sregs, entry):
    if entry.mode == REAL:
        # SeaBIOS's far call: CS:IP from the flat address, the segment 16 bits wide.
        selector = (entry.address >> 4) & 0xFFFF
        _set_segment(sregs.cs, selector=selector, base=selector << 4)
        regs.rip = entry.address & 0xF
        sregs.cr0 = CR0_ET
    elif entry.mode == PROTECTED:
        _, code, data, _ = gdt.boot_gdt(gdt.CODE32)
        _set_segment(sregs.cs, **code)
        for name in SEGMENTS[1:]:
            _set_segment(getattr(sregs, name), **data)
        regs.rip = entry.address
        sregs.cr0 = CR0_ET | CR0_PE
    else:
        raise ValueError(f"no waking vector in mode {entry.mode!r}")


def _set_segment(segment, **fields):
    for name, value in fields.items():
        setattr(segment, name, value)
