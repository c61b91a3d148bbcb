"""From a config to a ready VM: guest memory holding the firmware tables and
the kernel, the KVM VM with its in-kernel interrupt controllers and timer
and its memory slots, and the vCPUs with their CPUID, MSRs, local APIC and
entry state. Bad input (memory size, kernel) is refused before KVM is
touched; what was made is released if a later step fails.
"""

from ..arch.x86_64 import acpi, cpuid, lapic, layout, modes, msr, mptable
from ..arch.x86_64.power_on import VcpuBoot
from ..kvm import Kvm
from ..loader import LoadOptions, load_kernel
from ..loader.common import BootSpec
from ..loader.files import InputFileError, read_file, read_kernel  # noqa: F401  (Machine's API)
from ..memory import GuestMemory
from .snapshot import boot_of, load_memory


class BuiltVm:
    """What the builder made: kvm, vm, memory, the loaded kernel's `boot`
    description, the vCPUs with what each got before it first ran
    (`vcpu_boot`, a VcpuBoot each, for a reset) and the FACS address.
    close() releases them, the VM before its memory."""

    kvm = vm = memory = boot = facs = None

    def __init__(self):
        self.vcpus = []
        self.vcpu_boot = []

    def close(self):
        self.vcpus = []
        for part in (self.vm, self.memory, self.kvm):
            if part is not None:
                part.close()
        self.vm = self.memory = self.kvm = None


def build(config, image, options=None, virtio=()):
    """A BuiltVm for `config` with `image` (the kernel's bytes) loaded;
    `virtio`: the virtio-mmio transports the DSDT declares (uid, base, size, irq)."""
    built = BuiltVm()
    try:
        built.memory = GuestMemory(layout.ram_ranges(config.memory))
        options = options or LoadOptions()
        options.rsdp_addr = write_firmware_tables(built.memory, config.cpus, virtio)
        built.facs = acpi.facs_address(layout.ACPI_TABLES)
        built.boot = load_kernel(image, built.memory, options)
        create_vm(built, config)
        modes.enter(built.vcpus[0], built.memory, built.boot.mode, built.boot.entry, built.boot.regs,
                    tables=built.boot.tables)
    except BaseException:
        built.close()
        raise
    return built


def build_restored(config, snapshot):
    """A BuiltVm whose memory is a snapshot's (the firmware tables and the
    kernel come with it); the vCPUs' state is put in afterwards."""
    built = BuiltVm()
    try:
        built.memory = GuestMemory(layout.ram_ranges(config.memory))
        load_memory(built.memory, snapshot.memory_path)
        built.facs = acpi.facs_address(layout.ACPI_TABLES)
        built.boot = BootSpec(*boot_of(snapshot.state))
        create_vm(built, config)
    except BaseException:
        built.close()
        raise
    return built


def create_vm(built, config):
    """The KVM VM with its in-kernel interrupt controllers and timer, the
    memory slots, and the vCPUs."""
    built.kvm = Kvm()
    built.vm = built.kvm.create_vm()
    built.vm.set_tss_addr(layout.KVM_TSS)
    built.vm.set_identity_map_addr(layout.KVM_IDENTITY_MAP)
    built.vm.create_irqchip()
    built.vm.create_pit2(speaker_dummy=True)
    built.vm.add_memory(built.memory)
    built.vcpus, built.vcpu_boot = create_vcpus(built.kvm, built.vm, config)


def write_firmware_tables(memory, cpus, virtio=()):
    """ACPI and MP tables into the BIOS area; returns the RSDP's address."""
    tables, rsdp = acpi.build_acpi_tables(layout.ACPI_TABLES, cpus, irq0_pin=layout.IRQ0_PIN,
                                          virtio=virtio)
    memory.write(layout.ACPI_TABLES, tables)
    memory.write(layout.MPTABLE, mptable.build_mptable(layout.MPTABLE, cpus, irq0_pin=layout.IRQ0_PIN))
    return rsdp


def create_vcpus(kvm, vm, config):
    """(vCPUs, a VcpuBoot each). vCPU 0 boots the kernel; the others wait in
    the in-kernel LAPIC for INIT/SIPI from it, as on real hardware."""
    cpus = config.cpus
    supported = kvm.supported_cpuid()
    msr_indices = kvm.msr_index_list()
    msrs = msr.boot_msrs(msr_indices)
    reset_msrs = msr.reset_msrs(msr_indices, cpuid.kvm_features(supported))
    vcpus, boots = [], []
    for index in range(cpus):
        vcpu = vm.create_vcpu(index)
        vcpus.append(vcpu)
        entries = cpuid.vcpu_cpuid(supported, index, cpus, config.masked_features)
        vcpu.set_cpuid(entries)
        vcpu.set_msrs(msrs)
        lapic_page = lapic.set_lint_as_firmware_does(vcpu.get_lapic())
        vcpu.set_lapic(lapic_page)
        xcrs = {0: cpuid.boot_xcr0(entries)} if cpuid.has_feature(entries, "xsave") else {}
        if xcrs:
            vcpu.set_xcrs(xcrs)
        boots.append(VcpuBoot(reset_msrs, xcrs, bytes(lapic_page)))
    return vcpus, boots
