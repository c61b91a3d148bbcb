"""Register state for entering a guest in real, protected or long mode."""

from . import gdt, layout, paging

REAL, PROTECTED, LONG = "real", "protected", "long"
MODES = (REAL, PROTECTED, LONG)

CR0_PE, CR0_ET, CR0_PG = 1 << 0, 1 << 4, 1 << 31
CR4_PAE = 1 << 5
EFER_LME, EFER_LMA = 1 << 8, 1 << 10
RFLAGS_RESERVED = 1 << 1      # bit 1 always reads as 1; IF stays clear
FPU_CONTROL_WORD = 0x37F      # the FNINIT value
MXCSR_DEFAULT = 0x1F80


def write_boot_tables(memory, mode):
    """Writes the GDT, the empty IDT and (long mode) the identity page tables.

    Returns the code, data and TSS segment dicts for the vCPU. Real mode needs
    no tables.
    """
    if mode == REAL:
        return None
    table, code, data, tss = gdt.boot_gdt(gdt.CODE64 if mode == LONG else gdt.CODE32)
    memory.write(layout.BOOT_GDT, table)
    memory.fill(layout.BOOT_IDT, 8)
    if mode == LONG:
        for addr, blob in paging.identity_tables():
            memory.write(addr, blob)
    return code, data, tss, len(table)


def _real_segments(sregs, entry):
    # Entries below 64 KiB run with CS=0, IP=entry, like a boot sector;
    # higher ones with CS=entry>>4 (the binary must then be position-independent).
    segment, ip = (0, entry) if entry < 0x10000 else (entry >> 4, entry & 0xF)
    for reg in (sregs.cs, sregs.ds, sregs.es, sregs.fs, sregs.gs, sregs.ss):
        reg.selector = segment
        reg.base = segment << 4
        reg.limit = 0xFFFF
    return ip


def enter(vcpu, memory, mode, entry, regs=None, stack=layout.BOOT_STACK_TOP):
    """Points `vcpu` at `entry` in `mode` with the given general registers.

    Other GPRs are zero, interrupts are off, the stack pointer is `stack`.
    """
    if mode not in MODES:
        raise ValueError(f"unknown entry mode {mode!r}")
    sregs = vcpu.get_sregs()
    tables = write_boot_tables(memory, mode)
    if mode == REAL:
        ip = _real_segments(sregs, entry)
    else:
        code, data, tss, gdt_size = tables
        ip = entry
        for name, value in code.items():
            setattr(sregs.cs, name, value)
        for reg in (sregs.ds, sregs.es, sregs.fs, sregs.gs, sregs.ss):
            for name, value in data.items():
                setattr(reg, name, value)
        for name, value in tss.items():
            setattr(sregs.tr, name, value)
        sregs.gdt.base, sregs.gdt.limit = layout.BOOT_GDT, gdt_size - 1
        sregs.idt.base, sregs.idt.limit = layout.BOOT_IDT, 0
        sregs.cr0 = CR0_PE | CR0_ET
        if mode == LONG:
            sregs.cr3 = layout.PML4
            sregs.cr4 |= CR4_PAE
            sregs.cr0 |= CR0_PG
            sregs.efer |= EFER_LME | EFER_LMA
    vcpu.set_sregs(sregs)

    state = vcpu.get_regs()
    for name in ("rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rbp", "r8", "r9", "r10",
                 "r11", "r12", "r13", "r14", "r15"):
        setattr(state, name, 0)
    state.rip = ip
    state.rsp = stack
    state.rflags = RFLAGS_RESERVED
    for name, value in (regs or {}).items():
        setattr(state, name, value)
    vcpu.set_regs(state)

    fpu = vcpu.get_fpu()
    fpu.fcw = FPU_CONTROL_WORD
    fpu.mxcsr = MXCSR_DEFAULT
    vcpu.set_fpu(fpu)
