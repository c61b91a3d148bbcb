"""FastLoop: the vCPU run loop with its hot exits handled in C (csrc/fastpath.c).

`VcpuLoop._run_plain` is the readable reference: one trip through Python per
exit. FastLoop keeps everything about it but the loop itself: one C call
(`pyvmm_fast_run`) runs KVM_RUN until an exit needs Python, and handles in C
only the exits whose outcome Python published in advance:

* 1-byte writes to the UART's THR while a THR write is plain output (DLAB
  off, no loopback, THR-empty interrupt disabled). C appends the byte to a
  buffer shared by the VM's vCPUs; Python hands it to the UART
  (`Serial16550.transmit`) before it handles any other exit, so output keeps
  its order, and at least every `budget` fast exits, after every kick and
  at every supervisor flush.
* 1-byte reads of the UART's LSR while reading it has no side effect: C
  answers the published value.
* port I/O to `Sink` devices (drop writes, read a constant): benchmarks.

Coalesced writes (FastPath). Writes that need no answer and no immediate
effect do not exit at all: KVM appends them to the VM's coalesced ring.
Zones are registered for every device range a device lists in
`posted_writes` (debugcon, POST, the CMOS index port, or a user's device),
and for the UART's THR once the guest sends output in volume while a THR
write is plain output (removed when that ends; see coalesce_busy_uart).
The ring is drained, oldest entry first, before any exit is handled, by
the C loop for THR bytes and by `FastPath.drain` for the rest; and by the
supervisor at every flush, so a guest that writes and then spins without
exits is still heard. A posted write thus reaches its
device late but in order, before the device's next access. Counters: ring
writes count per port like exits do, and in `ExitStats.coalesced`.

Doorbells (pyvmm.doorbells): writes of a fixed value that a device lists in
`doorbells` go to a KVM ioeventfd instead of exiting, and reach the device
from a thread of their own, always before its next access.

Everything else stays in kvm_run and goes through the inherited Python
handlers (`port_bus`, `_string_io`, `_mmio`, `_other`), in order. Probes,
kicks, crashes and the debugger work as in VcpuLoop.

Publishing. The UART model knows nothing of this: it calls its
`state_listener` after every access and host event, with its lock held,
and UartShare republishes what C may do from the model's public answers.

Machine selects FastLoop for the default `--exit-path fast` when no hook or
trace needs the Python loop.

Counters: C counts every exit by reason and the fast ones by port; they are
merged into `stats` when the C call returns without a pending exit (budget,
kick, stop) and when the loop ends, so `Machine.exit_stats()` during a run
lags by at most one budget or probe interval. Final figures are exact.
"""

import sys
import threading

from ._kvm import ffi, lib
from .devices.serial import REGISTER_COUNT, Serial16550
from .doorbells import Doorbells
from .runloop import _EXIT_IO, _REASON_OFFSET, BYTES, EXIT_IO, EXIT_MMIO, IO_OUT, VALID_IO_SIZES, VcpuLoop
from .stats import ExitStats

# Fast exits before the C loop returns to Python anyway: bounds how long
# buffered output and the exit counters wait (4096 exits, about 40 ms).
DEFAULT_BUDGET = 4096
THR_OFFSET, LSR_OFFSET = 0, 5
# Fast THR writes between two visits to Python (budget, kick) that make the
# UART "busy": its THR writes are then coalesced (FastPath.coalesce_busy_uart).
THR_VOLUME = 64
# Times the THR zone is removed (the guest left plain output) before THR
# writes stop being coalesced for the run: see FastPath._thr_zone_follows.
THR_ZONE_REMOVALS = 8

if hasattr(lib, "pyvmm_fast_run"):
    FAST_STOP, FAST_EXIT, FAST_BUDGET = lib.PYVMM_FAST_STOP, lib.PYVMM_FAST_EXIT, lib.PYVMM_FAST_BUDGET
    FAST_RING, FAST_HANDLED = lib.PYVMM_FAST_RING, lib.PYVMM_FAST_HANDLED
    TXBUF, MAX_SINKS, SINK_PORTS = lib.PYVMM_FAST_TXBUF, lib.PYVMM_FAST_MAX_SINKS, lib.PYVMM_FAST_SINK_PORTS
    REASONS = lib.PYVMM_FAST_REASONS


def available():
    """Whether the C fast path is built into pyvmm._kvm (and this is Linux)."""
    return sys.platform.startswith("linux") and hasattr(lib, "pyvmm_fast_run")


class Sink:
    """A port device that drops writes and reads `fill` in every byte.

    The Python loop calls it like any device; the fast loop handles ranges
    of at most 8 ports registered with a Sink in C (the first 8 such
    ranges), with the same result. For benchmarks of the exit path itself.
    """

    def __init__(self, fill=0xFF):
        self.fill = fill & 0xFF

    def read(self, offset, size):
        return bytes((self.fill,)) * size

    def write(self, offset, data):
        pass


# --- the UART's published state -------------------------------------------------------

class UartShare:
    """One UART's C-side state (what C may do, and its TX buffer), shared by
    the vCPUs. Installs itself as the UART's state listener until close().

    `on_plain_output(bool)` (optional) hears, with the UART's lock held,
    whenever a THR write starts or stops being plain output."""

    def __init__(self, serial, on_plain_output=None):
        if serial.state_listener is not None:
            raise ValueError("the UART already has a state listener")
        self.serial = serial
        self.uart = ffi.new("struct pyvmm_fast_uart *")
        if lib.pyvmm_fast_uart_init(self.uart) < 0:
            raise OSError("cannot initialise the fast-path UART lock")
        self._out = ffi.new("unsigned char[]", TXBUF)
        self._out_buffer = ffi.buffer(self._out)
        self.on_plain_output = on_plain_output
        self.plain_output = None
        self.flushed = 0                            # bytes moved to the UART, for tests
        with serial.lock:
            serial.state_listener = self.publish
            self.publish()

    def publish(self):
        """The UART's state listener (its lock is held)."""
        serial = self.serial
        plain = serial.thr_write_is_plain_output()
        lsr = serial.lsr_without_side_effects()
        lib.pyvmm_fast_uart_publish(self.uart, plain, -1 if lsr is None else lsr)
        if plain != self.plain_output:
            self.plain_output = plain
            if self.on_plain_output is not None:
                self.on_plain_output(plain)

    def flush(self):
        """Hands the bytes C buffered to the UART, as their THR writes would have.
        Taken under the UART's lock (then C's, as publish() does): the scratch
        buffer is shared, and the supervisor and the vCPUs flush concurrently."""
        self.serial.transmit_taken(self._take)

    def _take(self):
        count = lib.pyvmm_fast_uart_take(self.uart, self._out, TXBUF)
        self.flushed += count
        return self._out_buffer[0:count]

    def close(self):
        """Flushes, and stops listening to the UART."""
        self.flush()
        with self.serial.lock:
            if self.serial.state_listener == self.publish:
                self.serial.state_listener = None
        lib.pyvmm_fast_uart_publish(self.uart, 0, -1)


# --- the stop flag -------------------------------------------------------------------

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
    if stop.requested:
        flag[0] = 1
    return flag


# --- what the VM's fast loops share ---------------------------------------------------

class FastPath:
    """The VM-wide side of the fast path: the UART share, the Sink ranges, and
    (given the Vm) the coalesced ring with its zones and the devices'
    doorbells (pyvmm.doorbells). Close it after the vCPU threads end: it
    unregisters the zones and delivers what is left. `on_error(message)`
    hears a device that failed on the doorbell thread."""

    def __init__(self, port_bus, mmio_bus, vm=None, on_error=None):
        self.port_bus, self.mmio_bus, self.vm = port_bus, mmio_bus, vm
        self.stats = ExitStats()                    # ring writes (no exits), by port / address
        self.doorbells = None
        self.share = None
        self.uart_base = None
        self.sinks = []                             # (base, length, fill)
        self.ring = None
        self.zones = []                             # (addr, size, pio) registered now
        self.lock = threading.Lock()                # one Python drainer at a time
        self._thr_zone = None
        self._thr_zone_removals = 0
        self._thr_counted = 0
        for base, length, _name in port_bus.ranges():
            device = port_bus.device_at(base)
            if isinstance(device, Serial16550) and length == REGISTER_COUNT and self.uart_base is None:
                self.uart_base = base
            elif isinstance(device, Sink) and length <= SINK_PORTS and len(self.sinks) < MAX_SINKS:
                self.sinks.append((base, length, device.fill))
        try:
            if vm is not None:
                self._open_ring(vm)
                self.doorbells = Doorbells(vm, port_bus, mmio_bus, on_error)
            if self.uart_base is not None:
                self.share = UartShare(port_bus.device_at(self.uart_base),
                                       self._thr_zone_follows if self.ring is not None else None)
        except BaseException:
            self.close()
            raise

    def _open_ring(self, vm):
        page = vm.coalesced_ring()
        if page is None or not vm.kvm.check_extension(lib.KVM_CAP_COALESCED_PIO):
            return
        ring = ffi.new("struct pyvmm_fast_ring *")
        if lib.pyvmm_fast_ring_init(ring, page[0], page[1]) < 0:
            raise OSError("cannot initialise the coalesced ring lock")
        self.ring = ring
        self._entry = ffi.new("struct kvm_coalesced_mmio *")
        if self.uart_base is not None:
            self._thr_zone = (self.uart_base + THR_OFFSET, 1, True)
        for bus, pio in ((self.port_bus, True), (self.mmio_bus, False)):
            for base, length, _name in bus.ranges():
                for offset, size in getattr(bus.device_at(base), "posted_writes", ()):
                    if 0 <= offset and 0 < size and offset + size <= length:
                        self._register((base + offset, size, pio))

    def _register(self, zone):
        self.vm.register_coalesced(*zone)
        self.zones.append(zone)

    def _unregister(self, zone):
        self.zones.remove(zone)
        self.vm.unregister_coalesced(*zone)

    def _thr_zone_follows(self, plain_output):
        """The THR zone goes as soon as THR writes stop being plain output
        (called with the UART's lock held)."""
        if not plain_output and self._thr_zone in self.zones:
            self._unregister(self._thr_zone)
            self._thr_zone_removals += 1

    def coalesce_busy_uart(self):
        """Registers the THR zone once the guest sends output in volume (a
        loop saw THR_VOLUME fast THR writes between two visits to Python)
        while THR writes are plain output.

        Lazily, because removing a zone waits for KVM's SRCU grace period
        (about 7 ms on kvm_pvm): a guest that only sets its UART up and
        prints a line would pay it when it next sets the divisor. And at
        most THR_ZONE_REMOVALS times: an interrupt-driven driver, which
        enables the THR-empty interrupt per burst, keeps its THR writes
        exiting (handled in C while plain) after that."""
        zone, share = self._thr_zone, self.share
        if zone is None or zone in self.zones or self._thr_zone_removals >= THR_ZONE_REMOVALS:
            return
        with share.serial.lock:
            if share.plain_output:
                self._register(zone)

    def attach(self, state):
        """Points a vCPU's C state at the shared parts."""
        if self.share is not None:
            state.uart = self.share.uart
            state.uart_base = self.uart_base
        for index, (base, length, fill) in enumerate(self.sinks):
            sink = state.sinks[index]
            sink.base, sink.length, sink.fill = base, length, fill
        state.nsinks = len(self.sinks)
        if self.ring is not None:
            self.ring.uart = state.uart
            self.ring.uart_base = state.uart_base
            state.ring = self.ring

    def drain(self):
        """Delivers the ring's writes, oldest first (C takes THR bytes itself)."""
        ring = self.ring
        if ring is None:
            return
        entry, share, count = self._entry, self.share, self.stats.count_unexited_writes
        with self.lock:
            try:
                while lib.pyvmm_fast_ring_pop(ring, entry):
                    if not entry.len:                           # never from KVM: nothing to write
                        continue
                    if share is not None and share.uart.len:    # THR bytes C took come first
                        share.flush()
                    address, data = entry.phys_addr, bytes(ffi.buffer(entry.data, entry.len))
                    count(address, entry.pio)
                    (self.port_bus if entry.pio else self.mmio_bus).write(address, data)
            finally:
                lib.pyvmm_fast_ring_release(ring)
            self._count_c_ring_writes()

    def _count_c_ring_writes(self):
        taken = self.ring.thr_out                   # only C increments it
        if taken != self._thr_counted:
            self.stats.count_unexited_writes(self.uart_base + THR_OFFSET, True, taken - self._thr_counted)
            self._thr_counted = taken

    def flush(self):
        """Delivers everything buffered: ring writes and THR bytes."""
        self.drain()
        if self.share is not None:
            self.share.flush()

    def counts(self):
        """ExitStats of the writes delivered without an exit (ring and doorbells)."""
        counts = ExitStats()
        counts.merge(self.stats)
        if self.doorbells is not None:
            counts.merge(self.doorbells.stats)
        return counts

    def close(self, vm_ending=False):
        """Unregisters the zones, then delivers what the ring and buffer hold.

        vm_ending: the VM never runs again (a Machine runs once), so the zones
        and ioeventfds are left to its teardown: undoing each one waits for
        an SRCU grace period in KVM (about 7 ms on kvm_pvm)."""
        if self.doorbells is not None:
            self.doorbells.close(vm_ending)
        if self.vm is not None and self.vm.fd >= 0 and not vm_ending:
            for zone in list(self.zones):
                self._unregister(zone)
        self.zones.clear()
        self.flush()
        if self.share is not None:
            self.share.close()
        self.ring = None


# --- the loop ------------------------------------------------------------------------

class FastLoop(VcpuLoop):
    """VcpuLoop whose plain loop runs in C until an exit needs Python."""

    budget = DEFAULT_BUDGET

    @staticmethod
    def supported(machine=None):
        """Whether the fast loop can run (for `machine`: it has no hooks or
        tracing, which need the observed Python loop)."""
        return available() and (machine is None or not machine.hooks)

    def __init__(self, vcpu, port_bus, mmio_bus, stop, stats, halt_is_final=lambda vcpu: True,
                 hooks=None, fast=None):
        super().__init__(vcpu, port_bus, mmio_bus, stop, stats, halt_is_final, hooks)
        self.state = None
        self.fast = fast
        if available() and not self.hooks:
            if self.fast is None:                   # a loop of its own: no ring
                self.fast = FastPath(port_bus, mmio_bus)
            self._setup()

    @property
    def share(self):
        return None if self.fast is None else self.fast.share

    @property
    def uart_base(self):
        return None if self.share is None else self.fast.uart_base

    @property
    def sinks(self):
        return [] if self.fast is None else [(base, length) for base, length, _ in self.fast.sinks]

    def _setup(self):
        vcpu = self.vcpu
        state = ffi.new("struct pyvmm_fast *")
        state.vcpu_fd = vcpu.fd
        state.run = vcpu.run
        state.run_size = vcpu.run_size
        self._stop_flag = stop_flag(self.stop)          # kept alive with the state
        state.stop = self._stop_flag
        state.budget = self.budget
        self.fast.attach(state)
        self.state = state

    def _collect(self):
        """Delivers buffered writes and merges the C counters into stats."""
        self.fast.flush()
        state, stats = self.state, self.stats
        reasons, ports = stats.reasons, stats.ports
        counts = ffi.unpack(state.exits, REASONS)
        for reason, count in enumerate(counts):
            if count:
                reasons[reason] += count
        ffi.memmove(state.exits, bytes(ffi.sizeof(state.exits)), ffi.sizeof(state.exits))
        state.exits_other = 0
        if not state.fast:
            return
        state.fast = 0
        if self.uart_base is not None:
            if state.thr_out >= THR_VOLUME:
                self.fast.coalesce_busy_uart()
            for key, field in (((self.uart_base + THR_OFFSET) << 1 | 1, "thr_out"),
                               ((self.uart_base + LSR_OFFSET) << 1, "lsr_in")):
                count = getattr(state, field)
                if count:
                    ports[key] = ports.get(key, 0) + count
                    setattr(state, field, 0)
        for index, (base, length) in enumerate(self.sinks):
            counts = state.sink_counts[index]
            for offset in range(length):
                for direction in (0, 1):
                    count = counts[offset][direction]
                    if count:
                        key = (base + offset) << 1 | direction
                        ports[key] = ports.get(key, 0) + count
                        counts[offset][direction] = 0

    def _run_plain(self):
        state = self.state
        if state is None:
            return super()._run_plain()
        vcpu, stop, stats = self.vcpu, self.stop, self.stats
        buf = vcpu.run_buffer
        run_size = vcpu.run_size
        port_read, port_write = self.port_bus.read, self.port_bus.write
        ports = stats.ports
        unpack_exit, header = _EXIT_IO.unpack_from, _REASON_OFFSET
        fast_run, pending, drain = lib.pyvmm_fast_run, lib.pyvmm_fast_pending, self.fast.drain
        share = self.share
        uart = share.uart if share is not None else None
        try:
            while not stop.requested:
                ret = fast_run(state)
                if ret == FAST_RING:                # the guest's earlier writes first
                    drain()
                    ret = pending(state)
                    if ret == FAST_HANDLED:
                        continue
                if ret != FAST_EXIT:
                    self._collect()
                    if ret < 0:
                        self._interrupted(ret)
                    continue
                if uart is not None and uart.len:   # output C buffered goes first
                    share.flush()
                # The exit, already counted by reason in C; from here the same as
                # VcpuLoop._run_plain, written out again because a shared method call
                # per exit measurably slowed that hot loop (bench/exit_latency).
                reason, direction, size, port, count, offset = unpack_exit(buf, header)
                if reason == EXIT_IO:
                    key = port << 1 | direction
                    ports[key] = ports.get(key, 0) + count
                    if count == 1 and size in VALID_IO_SIZES and offset + size <= run_size:
                        if direction == IO_OUT:
                            if size == 1:
                                port_write(port, BYTES[buf[offset]])
                            else:
                                port_write(port, bytes(buf[offset:offset + size]))
                        else:
                            buf[offset:offset + size] = port_read(port, size)
                    else:
                        self._string_io(direction, size, port, count, offset)
                elif reason == EXIT_MMIO:
                    self._mmio()
                else:
                    self._other(reason)
        finally:
            self._collect()
