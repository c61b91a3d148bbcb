"""The fast path: the vCPU run loop with its hot exits handled in C (csrc/fastpath.c).

FastLoop is VcpuLoop with one change: its `enter` is a C loop
(`pyvmm_fast_run`) that runs KVM_RUN until an exit needs Python, and handles
in C what the devices declared (pyvmm/devices/bus.py), compiled by FastPath
into a table of registers:

* a read of a cached register while its device has published a value: C
  answers the value (the 16550's LSR polls);
* a write inside a posted range while its device allows posting: C appends
  it to the deferred-write queue (pyvmm/run/deferred.py), which reaches the
  device before its next access (the 16550's THR and scratch register, the
  debug console, POST, the CMOS index).

A posted range that is written in volume (POSTED_VOLUME writes between two
visits to Python: C returns early to say so) also gets a KVM coalesced zone:
its writes then do not exit at all, and KVM queues them in its ring, which C moves into the same
queue. Doorbells go to KVM ioeventfds (pyvmm/run/doorbells.py). Everything
else goes through VcpuLoop's Python handlers, in order. No device is known
here by name or class: a new device gets the fast path by declaring its
registers.

Counters: C counts every exit by reason and each register it handled;
FastLoop merges them into its ExitStats at every return from C that leaves
no exit pending (budget, kick, stop) and when the loop ends, so
Machine.exit_stats() during a run lags by at most one budget or probe
interval. Final figures are exact.
"""

import functools
import sys
import threading

from .._kvm import ffi, lib
from ..kvm.exits import REASON_COUNT
from .deferred import DeferredWrites
from .doorbells import Doorbells
from .loop import VcpuLoop

# Fast exits before the C loop returns to Python anyway: bounds how long
# deferred writes and the exit counters wait (4096 exits, about 40 ms).
DEFAULT_BUDGET = 4096
# Posted writes to one range, between two visits to Python, that earn it a
# coalesced zone (see FastPath.coalesce_busy_ranges).
POSTED_VOLUME = 64
# Times a range's zone may be removed (its device stopped posting) before
# it stops getting one for the run: see FastPath._posting_changed.
ZONE_REMOVALS = 8
FAST_EXIT, FAST_STOP, FAST_BUDGET, FAST_DRAIN = (lib.PYVMM_FAST_EXIT, lib.PYVMM_FAST_STOP,
                                                 lib.PYVMM_FAST_BUDGET, lib.PYVMM_FAST_DRAIN)
MAX_REGISTERS = lib.PYVMM_FAST_REGS
POSTED, CACHED = lib.PYVMM_REG_POSTED, lib.PYVMM_REG_CACHED


def available():
    """Whether the C fast path can run here (Linux)."""
    return sys.platform.startswith("linux")


def stop_flag(stop):
    """An int the C loop reads, set once `stop` is requested (shared by the
    VM's loops): StopSignal.request is wrapped on this instance."""
    flag = getattr(stop, "_pyvmm_fast_flag", None)
    if flag is None:
        flag = ffi.new("int *")
        request = stop.request

        def request_and_flag(*args, **kwargs):
            try:
                return request(*args, **kwargs)
            finally:
                flag[0] = 1     # after `requested`, so the Python loop sees both

        stop.request = request_and_flag
        stop._pyvmm_fast_flag = flag
        stop.on_clear.append(lambda: flag.__setitem__(0, 0))
    if stop.requested:
        flag[0] = 1
    return flag


class Register:
    """One entry of the C table, and what it came from."""

    __slots__ = ("c", "kind", "pio", "address", "length", "state", "offset", "zone", "seen")

    def __init__(self, c, kind, pio, address, length, state, offset):
        self.c, self.kind, self.pio, self.address, self.length = c, kind, pio, address, length
        self.state, self.offset = state, offset
        self.zone = False           # a coalesced zone is registered for it
        self.seen = 0               # C's count at the last visit


class FastPath:
    """The VM-wide side of the fast path: the register table, the deferred
    queue, the coalesced zones and (given the Vm) the doorbells.

    `worker_for(device)` gives a device's worker thread (for its doorbells).
    Close it after the vCPU threads end: it unbinds the devices' published
    state, delivers what is queued and drops the zones and ioeventfds."""

    def __init__(self, port_bus, mmio_bus, vm=None, worker_for=None):
        self.port_bus, self.mmio_bus, self.vm = port_bus, mmio_bus, vm
        self.table = ffi.new("struct pyvmm_fast_table *")
        self.registers = []
        self.zone_removals = 0
        self.doorbells = None
        self._bound = []                            # RegisterStates whose listener is ours
        self._lock = threading.Lock()               # zone changes
        ring = None
        if vm is not None and vm.kvm.check_extension(lib.KVM_CAP_COALESCED_PIO):
            ring = vm.coalesced_ring()
        self.deferred = DeferredWrites(port_bus, mmio_bus, ring)
        self.coalescing = ring is not None
        try:
            for bus, pio in ((port_bus, True), (mmio_bus, False)):
                for entry in bus.entries():
                    self._compile(entry, pio)
                bus.settle = self.deferred.settle
            if vm is not None and worker_for is not None:
                self.doorbells = Doorbells(vm, port_bus, mmio_bus, self.deferred, worker_for)
        except BaseException:
            self.close()
            raise

    # --- the table ----------------------------------------------------------
    def _compile(self, entry, pio):
        delivery = entry.delivery
        if not delivery:
            return
        state = delivery.registers
        mine = {}
        for kind, declared in ((POSTED, delivery.posted), (CACHED, delivery.cached)):
            for offset, length in declared:
                if len(self.registers) >= MAX_REGISTERS:
                    break       # the rest stays with Python: correct, only slower
                c = self.table.regs + len(self.registers)      # a pointer into the table
                c.addr, c.len, c.pio, c.kind = entry.base + offset, length, pio, kind
                register = Register(c, kind, pio, entry.base + offset, length, state, offset)
                self.registers.append(register)
                mine[(kind, offset)] = register
        self.table.nregs = len(self.registers)
        state.bind(functools.partial(self._changed, mine))     # publishes the current state too
        self._bound.append(state)

    def _publish(self, register):
        if register.kind == POSTED:
            lib.pyvmm_fast_reg_publish(register.c, register.state.posting[register.offset], 0)
        else:
            value = register.state.values[register.offset]
            lib.pyvmm_fast_reg_publish(register.c, value is not None, value or 0)

    def _changed(self, mine, kind, offset):
        """A device published (on the thread that changed it), or bind() tells the start."""
        register = mine.get((POSTED if kind == "posted" else CACHED, offset))
        if register is None:
            return                          # declared, but the table was full
        self._publish(register)
        if register.kind == POSTED and not register.state.posting[offset]:
            self._posting_changed(register)

    # --- coalesced zones ------------------------------------------------------
    def _posting_changed(self, register):
        """A range's zone goes as soon as its device stops posting: the guest's
        next write there must exit."""
        with self._lock:
            if register.zone:
                self.vm.unregister_coalesced(register.address, register.length, register.pio)
                register.zone = False
                self.zone_removals += 1

    def coalesce_busy_ranges(self):
        """Registers a zone for each posted range written POSTED_VOLUME times
        since the last visit while its device allows posting.

        Lazily, because removing a zone waits for KVM's SRCU grace period
        (about 7 ms on kvm_pvm): a guest that only sets its UART up and
        prints a line would pay it when it next sets the divisor. And at most
        ZONE_REMOVALS removals in all: an interrupt-driven driver, which
        turns the THR-empty interrupt on per burst, then keeps exiting
        (its writes still handled in C while posting is allowed)."""
        if not self.coalescing:
            return
        with self._lock:
            for register in self.registers:
                if register.kind != POSTED:
                    continue
                count = register.c.count
                busy = count - register.seen >= POSTED_VOLUME
                register.seen = count
                if busy and not register.zone and self.zone_removals < ZONE_REMOVALS \
                        and register.state.posting[register.offset]:
                    self.vm.register_coalesced(register.address, register.length, register.pio)
                    register.zone = True

    def register_counts(self, stats):
        """Adds the reads C answered from cached registers to `stats` (posted
        writes are counted when they are delivered)."""
        for register in self.registers:
            if register.kind == CACHED:
                count = register.c.count
                if count != register.seen:
                    key = register.address << 1
                    if register.pio:
                        stats.count_port(key, count - register.seen)
                    else:
                        stats.count_mmio(key, count - register.seen)
                    register.seen = count

    def attach(self, state):
        """Points a vCPU's C state at the shared table and queue."""
        state.table = self.table
        state.log = self.deferred.log

    def flush(self):
        """Delivers everything queued (the supervisor calls it periodically)."""
        self.deferred.drain()

    def counts(self):
        """ExitStats of the deferred writes delivered and the cached reads answered so far."""
        with self._lock:
            self.register_counts(self.deferred.stats)
        return self.deferred.stats

    def close(self, vm_ending=False):
        """Unbinds, delivers what is queued, drops zones and doorbells.

        vm_ending: the VM never runs again (a Machine runs once), so the zones
        and ioeventfds are left to its teardown: undoing each one waits for
        an SRCU grace period in KVM (about 7 ms on kvm_pvm)."""
        for state in self._bound:
            state.bind(None)
        self._bound = []
        try:
            if self.doorbells is not None:
                self.doorbells.close(vm_ending)
                self.doorbells = None
            if not vm_ending and self.vm is not None and self.vm.fd >= 0:
                for register in self.registers:
                    self._posting_changed(register)
        finally:
            for bus in (self.port_bus, self.mmio_bus):
                bus.settle = None
            self.deferred.drain()


class FastLoop(VcpuLoop):
    """VcpuLoop whose `enter` runs the C loop until an exit needs Python."""

    budget = DEFAULT_BUDGET

    @staticmethod
    def supported(machine=None):
        """Whether the fast loop can run (for `machine`: it has no hooks or
        tracing, which need the observed Python loop)."""
        return available() and (machine is None or not machine.hooks)

    def __init__(self, vcpu, port_bus, mmio_bus, stop, stats, fast):
        super().__init__(vcpu, port_bus, mmio_bus, stop, stats)
        self.fast = fast
        state = ffi.new("struct pyvmm_fast *")
        state.vcpu_fd = vcpu.fd
        state.run = vcpu.run_pointer
        state.run_size = vcpu.run_size
        self._stop_flag = stop_flag(stop)           # kept alive with the state
        state.stop = self._stop_flag
        state.budget = self.budget
        state.volume = POSTED_VOLUME if fast.coalescing else 0     # a zone may be due: ask Python
        fast.attach(state)
        self.state = state
        self.enter = functools.partial(lib.pyvmm_fast_run, state)

    def exit_held(self):
        """C returned PYVMM_FAST_DRAIN with an exit still to handle: the next call handles it."""
        return bool(self.state.resume)

    def _interrupted(self, ret):
        """Not an exit: the log is full, the budget spent, the stop flag set, or a kick."""
        if ret == FAST_DRAIN:
            self.fast.deferred.drain()              # then the C loop finishes its exit
            return
        self._collect()
        if ret < 0:
            super()._interrupted(ret)

    def _collect(self):
        """Merges the C counters into stats, gives busy ranges a zone, delivers the queue."""
        state, reasons = self.state, self.stats.reasons
        for reason, count in enumerate(ffi.unpack(state.exits, REASON_COUNT)):
            if count:
                reasons[reason] += count
        ffi.memmove(state.exits, bytes(ffi.sizeof(state.exits)), ffi.sizeof(state.exits))
        if state.fast:
            self.stats.fast += state.fast
            state.fast = state.posted = 0
            self.fast.coalesce_busy_ranges()
        self.fast.deferred.drain()

    def run(self):
        try:
            return super().run()
        finally:
            self._collect()
