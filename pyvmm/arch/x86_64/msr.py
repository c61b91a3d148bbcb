"""Model-specific registers set on every vCPU before it starts (as Firecracker does)."""

IA32_TSC = 0x10
IA32_SYSENTER_CS, IA32_SYSENTER_ESP, IA32_SYSENTER_EIP = 0x174, 0x175, 0x176
IA32_MISC_ENABLE = 0x1A0
IA32_MTRR_DEF_TYPE = 0x2FF
STAR, LSTAR, CSTAR, SYSCALL_MASK = 0xC0000081, 0xC0000082, 0xC0000083, 0xC0000084
KERNEL_GS_BASE = 0xC0000102

MISC_ENABLE_FAST_STRING = 1 << 0
MTRR_ENABLE = 1 << 11
MTRR_TYPE_WRITEBACK = 6

BOOT_MSRS = {
    IA32_SYSENTER_CS: 0, IA32_SYSENTER_ESP: 0, IA32_SYSENTER_EIP: 0,
    STAR: 0, CSTAR: 0, KERNEL_GS_BASE: 0, SYSCALL_MASK: 0, LSTAR: 0,
    IA32_TSC: 0,
    IA32_MISC_ENABLE: MISC_ENABLE_FAST_STRING,
    # Memory is write-back unless an MTRR says otherwise: without this a
    # guest that trusts the MTRRs runs uncached.
    IA32_MTRR_DEF_TYPE: MTRR_ENABLE | MTRR_TYPE_WRITEBACK,
}


def boot_msrs(supported):
    """BOOT_MSRS restricted to the MSR indices KVM reports it can save/restore."""
    supported = set(supported)
    return {index: value for index, value in BOOT_MSRS.items() if index in supported}


IA32_PAT = 0x277
IA32_TSC_DEADLINE = 0x6E0
PAT_RESET = 0x0007040600070406
# A host write of 0 to IA32_TSC makes KVM take the vCPU for a new one and
# keep its TSC in step with the others (kvm_synchronize_tsc); QEMU writes 1
# on a reset so that the TSC really restarts.
TSC_AFTER_RESET = 1

# Written again when a vCPU is reset (an S3 wake): the boot values, and the
# reset values of MSRs a guest changes that the boot values leave alone.
RESET_MSRS = {**BOOT_MSRS, IA32_TSC: TSC_AFTER_RESET, IA32_PAT: PAT_RESET, IA32_TSC_DEADLINE: 0}

# KVM's paravirtual MSRs (Documentation/virt/kvm/x86/msr.rst) with which a
# guest has KVM keep writing into its memory (the KVM clock, steal time,
# async page faults, PV EOI), by the KVM feature bit (CPUID 0x40000001 EAX)
# that offers each: off again after a reset, as QEMU does, or KVM writes
# into the woken or rebooted guest's memory at the old guest's addresses.
# Polling control resets to 1 (the guest may poll), the only value KVM takes.
MSR_KVM_SYSTEM_TIME = 0x12
MSR_KVM_SYSTEM_TIME_NEW = 0x4B564D01
MSR_KVM_ASYNC_PF_EN = 0x4B564D02
MSR_KVM_STEAL_TIME = 0x4B564D03
MSR_KVM_PV_EOI_EN = 0x4B564D04
MSR_KVM_POLL_CONTROL = 0x4B564D05
MSR_KVM_ASYNC_PF_INT = 0x4B564D06
KVM_PV_RESET_MSRS = {  # feature bit: (MSR, reset value)
    0: (MSR_KVM_SYSTEM_TIME, 0), 3: (MSR_KVM_SYSTEM_TIME_NEW, 0), 4: (MSR_KVM_ASYNC_PF_EN, 0),
    5: (MSR_KVM_STEAL_TIME, 0), 6: (MSR_KVM_PV_EOI_EN, 0), 12: (MSR_KVM_POLL_CONTROL, 1),
    14: (MSR_KVM_ASYNC_PF_INT, 0),
}


def reset_msrs(supported, kvm_features=0):
    """RESET_MSRS and the paravirtual MSRs of the `kvm_features` the guest is
    offered (KVM_PV_RESET_MSRS), restricted to the MSR indices KVM reports
    it can save/restore."""
    supported = set(supported)
    wanted = dict(RESET_MSRS)
    wanted.update(pair for bit, pair in KVM_PV_RESET_MSRS.items() if kvm_features >> bit & 1)
    return {index: value for index, value in wanted.items() if index in supported}
