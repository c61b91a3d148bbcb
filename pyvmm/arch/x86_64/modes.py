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
IDT_OFFSET = layout.BOOT_IDT - layout.BOOT_GDT     # the IDT follows the GDT


class EntryTables:
    """Where the entry state's structures are in guest memory: the GDT (the
    empty IDT right after it), the identity page tables (long mode) and the
    top of the stack (a linear address). The defaults are layout's; a loader
    moves them out of a kernel's way."""

    def __init__(self, gdt=layout.BOOT_GDT, page_tables=layout.PML4,
                 stack=layout.BOOT_STACK_TOP):
        self.gdt = gdt
        self.idt = gdt + IDT_OFFSET
        self.page_tables = page_tables
        self.stack = stack

    def __repr__(self):
        return (f"EntryTables(gdt={self.gdt:#x}, page_tables={self.page_tables:#x}, "
                f"stack={self.stack:#x})")


def boot_table_blobs(mode, tables):
    """[(guest address, bytes, what)] that `mode` needs in memory at entry:
    the GDT and IDT (protected, long) and the page tables (long)."""
    if mode == REAL:
        return []
    table = gdt.boot_gdt(gdt.CODE64 if mode == LONG else gdt.CODE32)[0]
    blobs = [(tables.gdt, table + bytes(IDT_OFFSET - len(table) + 8), "pyvmm's GDT and IDT")]
    if mode == LONG:
        blobs.extend((addr, blob, "pyvmm's page tables")
                     for addr, blob in paging.identity_tables(tables.page_tables))
    return blobs


def write_boot_tables(memory, mode, tables=None):
    """Writes the GDT, the empty IDT and (long mode) the identity page tables."""
    for addr, blob, _what in boot_table_blobs(mode, tables or EntryTables()):
        memory.write(addr, blob)


def real_mode_segment(entry):
    """The segment real-mode code entered at `entry` runs in: entries below
    64 KiB run with CS=0, IP=entry, like a boot sector; higher ones with
    CS=entry>>4 (the binary must then be position-independent)."""
    return 0 if entry < 0x10000 else entry >> 4


def _real_segments(sregs, entry):
    segment = real_mode_segment(entry)
    for reg in (sregs.cs, sregs.ds, sregs.es, sregs.fs, sregs.gs, sregs.ss):
        reg.selector = segment
        reg.base = segment << 4
        reg.limit = 0xFFFF
    return entry - (segment << 4)


def enter(vcpu, memory, mode, entry, regs=None, tables=None):
    """Points `vcpu` at `entry` in `mode` with the given general registers.

    Other GPRs are zero, interrupts are off, the stack pointer is
    tables.stack (in real mode, relative to SS). Without `tables` the
    structures go to their usual addresses and are written here; with them
    (a loader's BootSpec.tables) they are already in guest memory.
    """
    if mode not in MODES:
        raise ValueError(f"unknown entry mode {mode!r}")
    if tables is None:
        base = real_mode_segment(entry) << 4 if mode == REAL else 0
        tables = EntryTables(stack=base + layout.BOOT_STACK_TOP)
        write_boot_tables(memory, mode, tables)
    sregs = vcpu.get_sregs()
    stack = tables.stack
    if mode == REAL:
        ip = _real_segments(sregs, entry)
        stack -= real_mode_segment(entry) << 4
    else:
        table, code, data, tss = gdt.boot_gdt(gdt.CODE64 if mode == LONG else gdt.CODE32)
        ip = entry
        for name, value in code.items():
            setattr(sregs.cs, name, value)
        for reg in (sregs.ds, sregs.es, sregs.fs, sregs.gs, sregs.ss):
            for name, value in data.items():
                setattr(reg, name, value)
        for name, value in tss.items():
            setattr(sregs.tr, name, value)
        sregs.gdt.base, sregs.gdt.limit = tables.gdt, len(table) - 1
        sregs.idt.base, sregs.idt.limit = tables.idt, 0
        sregs.cr0 = CR0_PE | CR0_ET
        if mode == LONG:
            sregs.cr3 = tables.page_tables
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
