"""Vm: one KVM virtual machine (memory slots, vCPUs, in-kernel devices)."""

import functools
import mmap
import os
from typing import NamedTuple

from .._kvm import ffi, lib
from ._ioctl import FdObject, ioctl, ioctl_value
from .eventfd import IoEventFd, IrqFd
from .vcpu import XSAVE_LEGACY_SIZE, Vcpu

PAGE_SIZE = 4096
DIRTY_LOG = lib.KVM_MEM_LOG_DIRTY_PAGES


class MemorySlot(NamedTuple):
    slot: int
    guest_addr: int
    size: int
    host_addr: int
    flags: int


class Vm(FdObject):
    """A VM file descriptor. Owns the vCPUs it creates and closes them with it."""

    # The open IrqFd and IoEventFd objects, closed with the VM. A tuple
    # replaced on each change, so one may close itself while _release iterates.
    eventfds = ()

    def __init__(self, kvm, fd):
        self.kvm = kvm
        self.fd = fd
        self.vcpus = []
        self.slots = {}

    def set_user_memory_region(self, slot, guest_phys_addr, size, host_addr, flags=0):
        region = ffi.new("struct kvm_userspace_memory_region *", {
            "slot": slot, "flags": flags, "guest_phys_addr": guest_phys_addr,
            "memory_size": size, "userspace_addr": host_addr,
        })
        ioctl(self.fd, "KVM_SET_USER_MEMORY_REGION", region,
              f"slot {slot} at {guest_phys_addr:#x}, {size:#x} bytes")
        if size:
            self.slots[slot] = MemorySlot(slot, guest_phys_addr, size, host_addr, flags)
        else:
            self.slots.pop(slot, None)

    # --- dirty-page log ---------------------------------------------------------------
    def log_dirty_pages(self, enable=True):
        """Turns KVM's dirty-page log on (or off) for every memory slot."""
        for slot in list(self.slots.values()):
            flags = slot.flags | DIRTY_LOG if enable else slot.flags & ~DIRTY_LOG
            if flags != slot.flags:
                self.set_user_memory_region(slot.slot, slot.guest_addr, slot.size, slot.host_addr, flags)

    def dirty_log(self, slot):
        """KVM_GET_DIRTY_LOG: the slot's bitmap of pages the guest wrote since
        the last call (bit n: page n of the slot), as bytes; KVM clears it."""
        memory_slot = self.slots[slot]
        bitmap = ffi.new("uint64_t[]", (memory_slot.size // PAGE_SIZE + 63) // 64)
        log = ffi.new("struct kvm_dirty_log *", {"slot": slot, "dirty_bitmap": bitmap})
        ioctl(self.fd, "KVM_GET_DIRTY_LOG", log, f"slot {slot}")
        return bytes(ffi.buffer(bitmap))

    # --- in-kernel devices' state ---------------------------------------------------------
    def get_irqchip(self, chip):
        """KVM_GET_IRQCHIP for chip KVM_IRQCHIP_PIC_MASTER, _PIC_SLAVE or _IOAPIC."""
        irqchip = ffi.new("struct kvm_irqchip *", {"chip_id": chip})
        ioctl(self.fd, "KVM_GET_IRQCHIP", irqchip, f"chip {chip}")
        return irqchip

    def set_irqchip(self, irqchip):
        ioctl(self.fd, "KVM_SET_IRQCHIP", irqchip, f"chip {irqchip.chip_id}")

    def get_pit2(self):
        pit = ffi.new("struct kvm_pit_state2 *")
        ioctl(self.fd, "KVM_GET_PIT2", pit)
        return pit

    def set_pit2(self, pit):
        ioctl(self.fd, "KVM_SET_PIT2", pit)

    def get_clock(self):
        """The KVM clock (kvmclock's nanoseconds)."""
        clock = ffi.new("struct kvm_clock_data *")
        ioctl(self.fd, "KVM_GET_CLOCK", clock)
        return clock.clock

    def set_clock(self, nanoseconds):
        ioctl(self.fd, "KVM_SET_CLOCK", ffi.new("struct kvm_clock_data *", {"clock": nanoseconds}))

    @functools.cached_property
    def xsave_size(self):
        """Bytes of a vCPU's XSAVE area: KVM_CAP_XSAVE2's answer on the VM, else 4096."""
        return max(XSAVE_LEGACY_SIZE, ioctl_value(self.fd, "KVM_CHECK_EXTENSION", lib.KVM_CAP_XSAVE2))

    def add_memory(self, memory):
        """Registers every region of a GuestMemory as its own slot. The regions
        must outlive the VM (KVM keeps their host addresses)."""
        for region in memory.regions:
            pointer = ffi.from_buffer(region.mapping)
            try:
                host_addr = int(ffi.cast("uintptr_t", pointer))
            finally:
                ffi.release(pointer)
            self.set_user_memory_region(len(self.slots), region.guest_addr, region.size, host_addr)

    def slot_of(self, guest_addr):
        """The slot number whose memory starts at `guest_addr`."""
        for slot in self.slots.values():
            if slot.guest_addr == guest_addr:
                return slot.slot
        raise KeyError(f"no memory slot at {guest_addr:#x}")

    def set_tss_addr(self, addr):
        ioctl_value(self.fd, "KVM_SET_TSS_ADDR", addr)

    def set_identity_map_addr(self, addr):
        ioctl(self.fd, "KVM_SET_IDENTITY_MAP_ADDR", ffi.new("uint64_t *", addr))

    def create_irqchip(self):
        ioctl_value(self.fd, "KVM_CREATE_IRQCHIP")

    def create_pit2(self, speaker_dummy=True):
        """The in-kernel PIT; speaker_dummy: KVM also answers the PC speaker port 0x61."""
        flags = lib.KVM_PIT_SPEAKER_DUMMY if speaker_dummy else 0
        ioctl(self.fd, "KVM_CREATE_PIT2", ffi.new("struct kvm_pit_config *", {"flags": flags}))

    def irq_line(self, irq, level):
        ioctl(self.fd, "KVM_IRQ_LINE", ffi.new("struct kvm_irq_level *", {"irq": irq, "level": level}))

    def register_coalesced(self, addr, size, pio=False):
        """KVM_REGISTER_COALESCED_MMIO: writes inside [addr, addr+size) (port
        I/O if `pio`) go to the ring instead of exiting (see coalesced_ring)."""
        ioctl(self.fd, "KVM_REGISTER_COALESCED_MMIO", self._zone(addr, size, pio),
              f"{'port' if pio else 'MMIO'} {addr:#x}+{size}")

    def unregister_coalesced(self, addr, size, pio=False):
        ioctl(self.fd, "KVM_UNREGISTER_COALESCED_MMIO", self._zone(addr, size, pio),
              f"{'port' if pio else 'MMIO'} {addr:#x}+{size}")

    @staticmethod
    def _zone(addr, size, pio):
        return ffi.new("struct kvm_coalesced_mmio_zone *", {"addr": addr, "size": size, "pio": int(pio)})

    def coalesced_ring(self):
        """(pointer, bytes) of the coalesced-write ring page, mapped with
        each vCPU's kvm_run; None without vCPUs or without the capability."""
        offset = self.kvm.check_extension(lib.KVM_CAP_COALESCED_MMIO)
        if not offset or not self.vcpus:
            return None
        page = mmap.PAGESIZE
        vcpu = self.vcpus[0]
        if vcpu.run_size < (offset + 1) * page:
            return None
        return ffi.cast("char *", vcpu.run_pointer) + offset * page, page

    def irqfd(self, gsi, resample=False):
        """An IrqFd: its signal() raises an edge on `gsi` with no ioctl, or with
        `resample` a level kept until the guest's EOI (closed with the VM)."""
        return self._adopt(IrqFd(self, gsi, resample))

    def ioeventfd(self, addr, length, pio=True, datamatch=None):
        """An IoEventFd: guest writes of `length` bytes at `addr` (matching
        `datamatch` if given) bump it instead of exiting (closed with the VM)."""
        return self._adopt(IoEventFd(self, addr, length, pio, datamatch))

    def _adopt(self, eventfd):
        self.eventfds += (eventfd,)
        return eventfd

    def _forget(self, eventfd):
        """Called by an eventfd's close(): the VM no longer has to close it."""
        self.eventfds = tuple(owned for owned in self.eventfds if owned is not eventfd)

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
        for eventfd in self.eventfds:   # the VM goes, and its assignments with it
            eventfd.abandon()
        for vcpu in self.vcpus:
            vcpu.close()
        self.vcpus.clear()
