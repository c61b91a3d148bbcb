"""Vm: one KVM virtual machine (memory slots, vCPUs, in-kernel devices)."""

import os

from .._kvm import ffi
from ._ioctl import FdObject, ioctl, ioctl_value
from .vcpu import Vcpu


class Vm(FdObject):
    """A VM file descriptor. Owns the vCPUs it creates and closes them with it."""

    def __init__(self, kvm, fd):
        self.kvm = kvm
        self.fd = fd
        self.vcpus = []
        self.slots = {}
        self.has_irqchip = False

    def set_user_memory_region(self, slot, guest_phys_addr, size, host_addr, flags=0):
        region = ffi.new("struct kvm_userspace_memory_region *", {
            "slot": slot, "flags": flags, "guest_phys_addr": guest_phys_addr,
            "memory_size": size, "userspace_addr": host_addr,
        })
        ioctl(self.fd, "KVM_SET_USER_MEMORY_REGION", region,
              f"slot {slot} at {guest_phys_addr:#x}, {size:#x} bytes")
        if size:
            self.slots[slot] = (guest_phys_addr, size)
        else:
            self.slots.pop(slot, None)

    def add_memory(self, memory):
        """Registers every region of a GuestMemory as its own slot."""
        for region in memory.regions:
            self.set_user_memory_region(len(self.slots), region.guest_addr, region.size,
                                        region.host_addr)

    def set_tss_addr(self, addr):
        ioctl_value(self.fd, "KVM_SET_TSS_ADDR", addr)

    def set_identity_map_addr(self, addr):
        ioctl(self.fd, "KVM_SET_IDENTITY_MAP_ADDR", ffi.new("uint64_t *", addr))

    def create_irqchip(self):
        ioctl_value(self.fd, "KVM_CREATE_IRQCHIP")
        self.has_irqchip = True

    def create_pit2(self, flags=0):
        ioctl(self.fd, "KVM_CREATE_PIT2", ffi.new("struct kvm_pit_config *", {"flags": flags}))

    def irq_line(self, irq, level):
        ioctl(self.fd, "KVM_IRQ_LINE", ffi.new("struct kvm_irq_level *", {"irq": irq, "level": level}))

    def create_vcpu(self, index):
        fd = ioctl_value(self.fd, "KVM_CREATE_VCPU", index, f"vCPU {index}")
        try:
            vcpu = Vcpu(self, fd, index, self.kvm.vcpu_mmap_size)
        except BaseException:
            os.close(fd)
            raise
        self.vcpus.append(vcpu)
        return vcpu

    def _release(self):
        for vcpu in self.vcpus:
            vcpu.close()
        self.vcpus.clear()
