"""FastLoop: the vCPU run loop with its hot exits handled in C (csrc/fastpath.c).

`VcpuLoop._run_plain` is the readable reference: one trip through Python per
exit. FastLoop keeps everything about it but the loop itself: one C call
(`pyvmm_fast_run`) runs KVM_RUN until an exit needs Python, and handles in C
only the exits whose outcome Python published in advance:

* 1-byte writes to the UART's THR while transmission is "simple" (DLAB=0,
  no loopback, THR-empty interrupt disabled: then a THR write only appends
  the byte to the output and counts it). C appends the byte to a buffer
  shared by the VM's vCPUs; Python moves it into the UART's output and
  counters (`flush`) before it handles any other exit, so the output keeps
  its order, and at least every `budget` fast exits or after every kick.
* 1-byte reads of the UART's LSR while reading it has no side effect
  (receiver empty, no error bits): C answers the published value (0x60).
* port I/O to `Sink` devices (drop writes, read a constant): benchmarks.

Everything else stays in kvm_run and goes through the inherited Python
handlers (`port_bus`, `_string_io`, `_mmio`, `_other`), in order. Probes,
kicks, crashes and the debugger work as in VcpuLoop.

Publishing. The UART model (devices/serial.py) knows nothing of this. The
published state is recomputed whenever the UART's lock is released, by
wrapping that lock (`_PublishingLock`): every register write Python handles,
host input arriving through `feed()` from another thread, a reset. The
wrapper takes the same underlying lock, so installing it while another
thread holds the lock is safe.

Machine selects it for `--exit-path fast` (VmConfig.exit_path = "fast")
when no hook or trace needs the Python loop.

Counters: C counts every exit by reason and the fast ones by port; they are
merged into `stats` when the C call returns without a pending exit (budget,
kick, stop) and when the loop ends, so `Machine.exit_stats()` during a run
lags by at most one budget or probe interval. Final figures are exact.

Not done: a coalesced-PIO zone on THR (KVM_REGISTER_COALESCED_MMIO, pio=1)
would save the THR write's exit. It needs the VM-wide ring drained, under the
UART lock, before every exit is handled (C and Python), the zone registered
only while transmission is simple (and unregistered before the publishing
lock is released, and when the fast loops end, so a Python loop never runs
with it), and every ring entry treated as a data byte written before the
register write that ended simplicity. Not worth its risk here: the LSR poll
still exits for every byte (port reads cannot be answered in the kernel).
"""

import sys

from ._kvm import ffi, lib
from .devices.serial import IER_THRI, LCR_DLAB, LSR_TEMT, LSR_THRE, MCR_LOOP, REGISTER_COUNT, Serial16550
from .runloop import _EXIT_IO, _REASON_OFFSET, BYTES, EXIT_IO, EXIT_MMIO, IO_OUT, VALID_IO_SIZES, VcpuLoop

# Fast exits before the C loop returns to Python anyway: bounds how long
# buffered output and the exit counters wait (4096 exits, about 40 ms).
DEFAULT_BUDGET = 4096
# LSR while idle: transmitter empty, no data, no errors. Only this value is
# answered in C: any other has side effects (errors clear on read).
LSR_IDLE = LSR_THRE | LSR_TEMT
THR_OFFSET, LSR_OFFSET = 0, 5

if hasattr(lib, "pyvmm_fast_run"):
    FAST_STOP, FAST_EXIT, FAST_BUDGET = lib.PYVMM_FAST_STOP, lib.PYVMM_FAST_EXIT, lib.PYVMM_FAST_BUDGET
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

def uart_fast_state(serial):
    """(tx_simple, lsr) for the C side, from the UART's registers; the caller
    holds the UART's lock. lsr is -1 unless an LSR read has no side effect."""
    tx_simple = not (serial._lcr & LCR_DLAB or serial._mcr & MCR_LOOP or serial._ier & IER_THRI)
    idle = not serial._rx and not serial._lsr_errors
    return tx_simple, (LSR_IDLE if idle else -1)


class _PublishingLock:
    """The UART's lock, publishing the fast-path state on every release."""

    __slots__ = ("inner", "publish")

    def __init__(self, inner, publish):
        self.inner = inner
        self.publish = publish

    def acquire(self, blocking=True, timeout=-1):
        return self.inner.acquire(blocking, timeout)

    def release(self):
        try:
            self.publish()
        finally:
            self.inner.release()

    def locked(self):
        return self.inner.locked()

    def __enter__(self):
        return self.inner.acquire()

    def __exit__(self, *exc):
        self.release()


class UartShare:
    """One UART's C-side state (flags and TX buffer), shared by the vCPUs.

    Created once per Serial16550 (`for_serial`) and kept on it."""

    def __init__(self, serial):
        uart_fast_state(serial)                     # raises AttributeError if the model changed
        self.serial = serial
        self.uart = ffi.new("struct pyvmm_fast_uart *")
        if lib.pyvmm_fast_uart_init(self.uart) < 0:
            raise OSError("cannot initialise the fast-path UART lock")
        self._out = ffi.new("unsigned char[]", TXBUF)
        self._out_buffer = ffi.buffer(self._out)
        self.inner = serial._lock
        self.flushed = 0                            # bytes moved to the UART, for tests
        serial._lock = _PublishingLock(self.inner, self.publish)
        with serial._lock:                          # waits for a holder of the old lock, publishes
            pass

    @classmethod
    def for_serial(cls, serial):
        share = getattr(serial, "_pyvmm_fast_share", None)
        if share is None:
            share = cls(serial)
            serial._pyvmm_fast_share = share
        return share

    def publish(self):
        """Called with the UART's lock held."""
        tx_simple, lsr = uart_fast_state(self.serial)
        lib.pyvmm_fast_uart_publish(self.uart, tx_simple, lsr)

    def flush(self):
        """Moves the bytes C buffered into the UART, as its THR writes would have:
        counted, sent to its output, THR empty again."""
        serial = self.serial
        with self.inner:
            count = lib.pyvmm_fast_uart_take(self.uart, self._out, TXBUF)
            if not count:
                return
            serial.bytes_transmitted += count
            output = serial._output
            if output is not None:
                output(self._out_buffer[0:count])
            serial._thr_pending = True
            serial._update_irq()
            self.flushed += count


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
                 hooks=None):
        super().__init__(vcpu, port_bus, mmio_bus, stop, stats, halt_is_final, hooks)
        self.state = None
        self.share = None
        self.uart_base = None
        self.sinks = []
        if available() and not self.hooks:
            self._setup()

    def _setup(self):
        vcpu = self.vcpu
        state = ffi.new("struct pyvmm_fast *")
        state.vcpu_fd = vcpu.fd
        state.run = vcpu.run
        state.run_size = vcpu.run_size
        self._stop_flag = stop_flag(self.stop)          # kept alive with the state
        state.stop = self._stop_flag
        state.budget = self.budget
        for base, length, _name in self.port_bus.ranges():
            device = self.port_bus.device_at(base)
            if isinstance(device, Serial16550) and length == REGISTER_COUNT and self.share is None:
                try:
                    self.share = UartShare.for_serial(device)
                except AttributeError:                  # the UART model changed: no acceleration
                    continue
                self.uart_base = base
                state.uart = self.share.uart
                state.uart_base = base
            elif isinstance(device, Sink) and length <= SINK_PORTS and len(self.sinks) < MAX_SINKS:
                sink = state.sinks[len(self.sinks)]
                sink.base, sink.length, sink.fill = base, length, device.fill
                self.sinks.append((base, length))
        state.nsinks = len(self.sinks)
        self.state = state

    def _collect(self):
        """Flushes the UART buffer and merges the C counters into stats."""
        if self.share is not None:
            self.share.flush()
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
        fast_run = lib.pyvmm_fast_run
        share = self.share
        uart = share.uart if share is not None else None
        try:
            while not stop.requested:
                ret = fast_run(state)
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
