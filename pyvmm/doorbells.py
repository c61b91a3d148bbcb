"""Doorbells: device registers written through a KVM ioeventfd, not an exit.

A device may list `doorbells = ((offset, length, value), ...)`: a write of
exactly `value` (`length` bytes, little-endian) at `offset` only tells the
device to look at its own state, as a virtio queue notification does.
Under the fast path such a write does not exit: KVM bumps an eventfd
(KVM_IOEVENTFD with datamatch) and the guest runs on. Other values at that
offset, and other sizes, still exit as usual.

The device still receives every such write, as `write(offset, value)`:
- from the `pyvmm-doorbells` thread, as soon as it wakes up, and
- before any other access to the device reaches it (the bus range is
  interposed), so a guest that rings and then reads sees the ring handled.
A device with doorbells must therefore accept calls from that thread (the
device contract already asks shared devices to take their own lock).
A device that also lists `posted_writes` gets no doorbells: the order of
its queued writes and its doorbell writes could not be kept.
"""

import select
import threading

from .kvm.eventfd import EventFd
from .stats import ExitStats


class Doorbell:
    """One doorbell register: its ioeventfd and the write it stands for."""

    def __init__(self, eventfd, device, offset, value, address, pio):
        self.eventfd, self.device, self.offset, self.value = eventfd, device, offset, value
        self.address, self.pio = address, pio


class Doorbells:
    """Every doorbell of a VM's devices, its interposed ranges and its thread.

    `stats` counts the delivered writes by port or address and in
    `coalesced` (they are writes without an exit). close() stops the
    thread, delivers what the eventfds still count and unassigns them.
    """

    def __init__(self, vm, port_bus, mmio_bus, on_error=None):
        self.stats = ExitStats()
        self.on_error = on_error            # on_error(message): a device raised on the thread
        self.bells = []
        self.lock = threading.Lock()        # one deliverer at a time: writes stay in order
        self._restore = []
        self._wake = None
        self._thread = None
        try:
            for bus, pio in ((port_bus, True), (mmio_bus, False)):
                for base, length, _name in bus.ranges():
                    self._assign(vm, bus, pio, base, length)
            if self.bells:
                self._wake = EventFd()
                self._thread = threading.Thread(target=self._watch, name="pyvmm-doorbells", daemon=True)
                self._thread.start()
        except BaseException:
            self.close()
            raise

    def _assign(self, vm, bus, pio, base, length):
        device = bus.device_at(base)
        if getattr(device, "posted_writes", ()):
            return
        bells = []
        for offset, size, value in getattr(device, "doorbells", ()):
            if not (0 <= offset and offset + size <= length and 0 <= value < 1 << (8 * size)):
                continue                    # outside its range, or a value that cannot match
            address = base + offset
            eventfd = vm.ioeventfd(address, size, pio=pio, datamatch=value)
            bells.append(Doorbell(eventfd, device, offset, value.to_bytes(size, "little"), address, pio))
        if bells:
            self.bells += bells
            self._restore.append(bus.interpose(base, lambda: self.deliver(bells)))

    def deliver(self, bells=None):
        """Hands each doorbell's counted writes to its device."""
        with self.lock:
            for bell in self.bells if bells is None else bells:
                rings = bell.eventfd.take()
                if not rings:
                    continue
                self.stats.count_unexited_writes(bell.address, bell.pio, rings)
                for _ in range(rings):
                    bell.device.write(bell.offset, bell.value)

    def _watch(self):
        poller = select.poll()
        for fd in [bell.eventfd.fileno() for bell in self.bells] + [self._wake.fileno()]:
            poller.register(fd, select.POLLIN)
        while True:
            poller.poll()
            if self._wake.take():
                return
            try:
                self.deliver()
            except Exception as error:      # a device bug: end the run, never a traceback
                if self.on_error is not None:
                    self.on_error(f"doorbell: pyvmm internal error: {type(error).__name__}: {error}")
                return

    def close(self, vm_ending=False):
        """vm_ending: the VM never runs again, so its teardown drops the
        ioeventfds (cheaper than unassigning each one now)."""
        if self._thread is not None:
            self._wake.signal()
            self._thread.join()
            self._thread = None
        for restore in self._restore:
            restore()
        self._restore = []
        try:
            self.deliver()                  # what was counted before the unassignment
        finally:
            for bell in self.bells:
                if vm_ending:
                    bell.eventfd.abandon()
                else:
                    bell.eventfd.close()
            self.bells = []
            if self._wake is not None:
                self._wake.close()
                self._wake = None

