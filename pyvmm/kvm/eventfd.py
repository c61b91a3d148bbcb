"""EventFd, IrqFd, IoEventFd: eventfds that KVM signals or listens to.

An eventfd is a counter in the kernel that KVM can bump or drain by itself.
Assigned as an irqfd, a write to it (from any thread) raises an interrupt in
the guest without an ioctl; assigned as an ioeventfd, a guest write to a port
or MMIO address bumps it without a vCPU exit to userspace. Each object owns
its eventfd and its registration: close() deassigns, then closes the fd.
"""

import os

from .._kvm import ffi, lib
from ._ioctl import FdObject, ioctl

# KVM takes any GSI and silently drops an interrupt on one with no route;
# past the routing table's classic size a GSI is certainly a mistake.
GSI_COUNT = 1024
PORT_SPACE = 0x10000
ADDRESS_SPACE = 1 << 64
IOEVENTFD_LENGTHS = (1, 2, 4, 8)


class EventFd(FdObject):
    """A non-blocking eventfd: signal() adds to its counter, take() drains it."""

    def __init__(self):
        self.fd = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)

    def fileno(self):
        return self.fd

    @property
    def closed(self):
        return self.fd < 0

    def signal(self, n=1):
        """Adds n to the counter (wakes whoever waits on it, KVM included)."""
        os.eventfd_write(self.fd, n)

    def take(self):
        """The count added since the last take (0 if none); resets it to 0."""
        try:
            return os.eventfd_read(self.fd)
        except BlockingIOError:
            return 0


class _VmEventFd(EventFd):
    """An eventfd assigned to a VM by IOCTL; close() deassigns it while the VM is open.

    Subclasses build the request (`_request(flags)`) and name it (`where`).
    """

    IOCTL = DEASSIGN = None
    vm = None               # set once KVM accepted the assignment

    def _assign(self, vm):
        try:
            ioctl(vm.fd, self.IOCTL, self._request(0), self.where)
        except BaseException:
            self.close()    # the eventfd must not outlive a refused assignment
            raise
        self.vm = vm

    def _release(self):
        if self.vm is not None and self.vm.fd >= 0:
            self.vm._forget(self)
            ioctl(self.vm.fd, self.IOCTL, self._request(self.DEASSIGN), self.where)

    def abandon(self):
        """Closes the eventfd without deassigning it, for a VM being destroyed:
        KVM drops the assignment with the VM, and a deassign would first wait
        for an SRCU grace period (about 7 ms on kvm_pvm)."""
        if self.vm is not None:
            self.vm._forget(self)
            self.vm = None
        self.close()


class IrqFd(_VmEventFd):
    """Made by Vm.irqfd(gsi): signal() raises one edge on the GSI (KVM sets the
    line to 1, then 0), with no ioctl and from any thread.

    KVM drains the counter as it injects, so take() normally returns 0. It
    drives the line as the same source as Vm.irq_line, so its 0 also lowers a
    level that irq_line raised on that GSI.

    With resample=True it is a level-triggered line instead: signal() raises
    the GSI and keeps it up until the guest acknowledges the interrupt (EOI);
    KVM then lowers it and signals `resample` (an EventFd), so that the
    device raises it again if its condition still holds.
    """

    IOCTL, DEASSIGN = "KVM_IRQFD", lib.KVM_IRQFD_FLAG_DEASSIGN
    resample = None

    def __init__(self, vm, gsi, resample=False):
        if not 0 <= gsi < GSI_COUNT:
            raise ValueError(f"GSI {gsi} is outside 0..{GSI_COUNT - 1}")
        super().__init__()
        self.gsi = gsi
        if resample:
            try:
                self.resample = EventFd()
            except BaseException:
                self.close()
                raise
        self._assign(vm)

    @property
    def where(self):
        return f"GSI {self.gsi}"

    def _request(self, flags):
        resamplefd = 0
        if self.resample is not None:
            flags |= lib.KVM_IRQFD_FLAG_RESAMPLE
            resamplefd = self.resample.fileno()
        return ffi.new("struct kvm_irqfd *", {"fd": self.fd, "gsi": self.gsi, "flags": flags,
                                              "resamplefd": resamplefd})

    def _release(self):
        try:
            super()._release()
        finally:
            if self.resample is not None:
                self.resample.close()


class IoEventFd(_VmEventFd):
    """Made by Vm.ioeventfd(...): each guest write of exactly `length` bytes at
    `addr` (a port if `pio`, else MMIO) whose value equals `datamatch` (any
    value if None) adds 1 to the counter instead of exiting to userspace.

    Other writes there, and every read, still exit as usual.
    """

    IOCTL, DEASSIGN = "KVM_IOEVENTFD", lib.KVM_IOEVENTFD_FLAG_DEASSIGN

    def __init__(self, vm, addr, length, pio=True, datamatch=None):
        if length not in IOEVENTFD_LENGTHS:
            raise ValueError(f"ioeventfd length {length} is not one of {IOEVENTFD_LENGTHS}")
        limit = PORT_SPACE if pio else ADDRESS_SPACE
        if not 0 <= addr <= limit - length:
            raise ValueError(f"{'port' if pio else 'MMIO address'} {addr:#x}+{length} "
                             f"is outside 0..{limit - 1:#x}")
        if datamatch is not None and not 0 <= datamatch < 1 << (8 * length):
            raise ValueError(f"datamatch {datamatch:#x} does not fit in {length} bytes")
        super().__init__()
        self.addr, self.length, self.pio, self.datamatch = addr, length, pio, datamatch
        self._assign(vm)

    @property
    def where(self):
        return f"{'port' if self.pio else 'MMIO'} {self.addr:#x}, {self.length} bytes"

    def _request(self, flags):
        if self.pio:
            flags |= lib.KVM_IOEVENTFD_FLAG_PIO
        if self.datamatch is not None:
            flags |= lib.KVM_IOEVENTFD_FLAG_DATAMATCH
        return ffi.new("struct kvm_ioeventfd *", {
            "fd": self.fd, "addr": self.addr, "len": self.length, "flags": flags,
            "datamatch": self.datamatch or 0,
        })
