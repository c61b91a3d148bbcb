"""Doorbells: device writes of a fixed value that KVM counts on an ioeventfd
instead of exiting (a virtio queue notification is one).

For every `doorbells` entry a device declares (pyvmm/devices/bus.py), the
fast path assigns an ioeventfd with datamatch on its address; other values
and sizes there still exit as usual. The ioeventfds are watched on the
device's own worker thread (pyvmm/devices/context.py): when one fires, its
count of writes joins the deferred-write queue (pyvmm/run/deferred.py) and
the queue is delivered, so the device gets write(offset, value) for each,
on its worker, and always before its next register access (the bus's
settle() collects a device's doorbells first).
"""


class Doorbell:
    """One doorbell register: its ioeventfd and the write it stands for."""

    __slots__ = ("eventfd", "address", "pio", "value")

    def __init__(self, eventfd, address, pio, value):
        self.eventfd, self.address, self.pio, self.value = eventfd, address, pio, value


class Doorbells:
    """Every doorbell of a VM's devices, armed on their buses and watched on
    their workers. `worker_for(device)` gives a device's DeviceWorker.
    close() disarms them and delivers what the eventfds still count."""

    def __init__(self, vm, port_bus, mmio_bus, deferred, worker_for):
        self.deferred = deferred
        self._armed = []                    # (bus range, worker, bells)
        try:
            for bus, pio in ((port_bus, True), (mmio_bus, False)):
                for entry in bus.entries():
                    if entry.delivery.doorbells:
                        self._arm(vm, entry, pio, worker_for(entry.device))
        except BaseException:
            self.close()
            raise

    def _arm(self, vm, entry, pio, worker):
        bells = []
        try:
            for offset, size, value in entry.delivery.doorbells:
                eventfd = vm.ioeventfd(entry.base + offset, size, pio=pio, datamatch=value)
                bells.append(Doorbell(eventfd, entry.base + offset, pio, value.to_bytes(size, "little")))
        except BaseException:
            for bell in bells:
                bell.eventfd.close()
            raise
        bells = tuple(bells)
        entry.bells = bells
        self._armed.append((entry, worker, bells))
        for bell in bells:
            worker.watch(bell.eventfd.fileno(), lambda bells=bells: self.deferred.collect(bells))

    def collect(self):
        """Queues (and delivers) every write the eventfds counted so far."""
        for _entry, _worker, bells in list(self._armed):
            self.deferred.collect(bells)

    def close(self, vm_ending=False):
        """vm_ending: the VM never runs again, so its teardown drops the
        ioeventfds (cheaper than deassigning each one now)."""
        armed, self._armed = self._armed, []
        try:
            for entry, worker, bells in armed:
                for bell in bells:
                    worker.unwatch(bell.eventfd.fileno())
                entry.bells = ()
                self.deferred.collect(bells)        # what was counted before the end
        finally:
            for _entry, _worker, bells in armed:
                for bell in bells:
                    if vm_ending:
                        bell.eventfd.abandon()
                    else:
                        bell.eventfd.close()
