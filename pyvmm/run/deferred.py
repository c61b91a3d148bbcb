"""The VM's one queue of writes that reach their device late, and the one rule
that keeps them in order.

Three sources feed it (pyvmm/run/fast.py sets them up):
- posted writes that exited and the C loop took (csrc/fastpath.c);
- posted writes that did not exit at all: KVM queued them in its coalesced
  ring, which C moves into the queue after every KVM_RUN and before the
  exit that follows is looked at;
- doorbell writes counted by KVM ioeventfds, added when they are collected.

The rule: before any access reaches a device, the bus calls settle(), which
collects that device's doorbells and, if anything is queued or being
delivered, delivers the whole queue, oldest first. So a device sees its
own accesses in guest order, and posted output keeps its order across
devices (the UART and the debug console share the queue). Device workers
deliver the queue before each callback (pyvmm.devices.context.DeviceWorker
catch_up), so work off the vCPU thread that reads guest memory comes after
the register writes the guest made before that memory. The supervisor's
periodic flush and the doorbell watchers deliver it too, so a guest that
writes and then spins without exits is still heard.

Delivery runs on whichever thread got there first (a vCPU, the supervisor,
a device's worker), one at a time. Consecutive writes of one size to one
address go to a device's write_many(offset, size, data) when it has one.
"""

import struct
import threading

from .._kvm import ffi, lib
from .stats import ExitStats

BATCH = 512
_ENTRY_SIZE = ffi.sizeof("struct pyvmm_fast_entry")
# addr, pio, len, source, data, padding: as struct pyvmm_fast_entry
_ENTRY = struct.Struct(f"<QBBB8s{_ENTRY_SIZE - 19}x")
FROM_RING, FROM_DOORBELL = lib.PYVMM_FROM_RING, lib.PYVMM_FROM_DOORBELL


def _check_layout():
    fields = [ffi.offsetof("struct pyvmm_fast_entry", name) for name in ("addr", "pio", "len", "source", "data")]
    if fields != [0, 8, 9, 10, 11] or _ENTRY_SIZE != _ENTRY.size:
        raise ImportError(f"unexpected struct pyvmm_fast_entry layout: {fields}, {_ENTRY_SIZE} bytes")


_check_layout()


class DeferredWrites:
    """The queue (a C log shared with the vCPUs' C loops) and its delivery.

    `ring`: (pointer, bytes) of KVM's coalesced ring page, or None. `stats`
    counts what was delivered, by address, with `coalesced` and `doorbells`.
    """

    def __init__(self, port_bus, mmio_bus, ring=None):
        self.buses = {True: port_bus, False: mmio_bus}
        self.log = ffi.new("struct pyvmm_fast_log *")
        pointer, size = ring if ring is not None else (ffi.NULL, 0)
        if lib.pyvmm_fast_log_init(self.log, pointer, size) < 0:
            raise OSError("cannot initialise the deferred-write log lock")
        self._batch = ffi.new("struct pyvmm_fast_entry[]", BATCH)
        self._batch_bytes = ffi.buffer(self._batch)
        self.lock = threading.Lock()
        self.stats = ExitStats()

    # --- the rule -----------------------------------------------------------
    def settle(self, entry):
        """Before an access reaches the device of bus range `entry`."""
        if entry.bells:
            self.collect(entry.bells)
        if self.log.pending:
            self.drain()

    def collect(self, bells):
        """Queues the writes that doorbells' ioeventfds counted, then delivers."""
        for bell in bells:
            rings = bell.eventfd.take()
            while rings:
                if lib.pyvmm_fast_log_append(self.log, bell.address, bell.pio, bell.value,
                                             len(bell.value), FROM_DOORBELL):
                    rings -= 1
                else:
                    self.drain()                # full: make room, keep the order
        if self.log.pending:
            self.drain()

    def append(self, address, pio, data, source=FROM_DOORBELL):
        """Queues one write (1 to 8 bytes); delivers first when the queue is full."""
        while not lib.pyvmm_fast_log_append(self.log, address, pio, data, len(data), source):
            self.drain()

    # --- delivery -----------------------------------------------------------
    def drain(self):
        """Delivers everything queued, oldest first (one thread at a time)."""
        with self.lock:
            log, batch = self.log, self._batch
            while True:
                taken = lib.pyvmm_fast_log_take(log, batch, BATCH)
                if not taken:
                    return
                try:
                    self._deliver(taken)
                finally:
                    lib.pyvmm_fast_log_release(log)

    def _deliver(self, taken):
        stats, buses = self.stats, self.buses
        run_key, run = None, []
        for addr, pio, length, source, data in _ENTRY.iter_unpack(self._batch_bytes[:taken * _ENTRY_SIZE]):
            key = (addr, pio, length)
            if key != run_key:
                if run:
                    self._write(run_key, run)
                run_key, run = key, []
            run.append(data[:length])
            stats.count_write(addr, pio)
            if source == FROM_RING:
                stats.coalesced += 1
            elif source == FROM_DOORBELL:
                stats.doorbells += 1
        if run:
            self._write(run_key, run)

    def _write(self, key, run):
        addr, pio, length = key
        bus = self.buses[bool(pio)]
        if len(run) == 1:
            bus.write(addr, run[0], queued=True)
        else:
            bus.deliver_many(addr, length, b"".join(run))
