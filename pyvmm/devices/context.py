"""What a device gets besides its registers: an interrupt line, guest memory,
and a worker thread of its own. The same for pyvmm's devices and a user's.

A device that defines `attach(context)` is handed a DeviceContext once, when
it is added to a machine and before the guest runs:

    class Dma:
        def attach(self, context):
            self.context = context
        def write(self, offset, data):          # on the vCPU thread
            self.context.worker.call(self._copy) # the work goes elsewhere
        def _copy(self):                        # on the device's worker thread
            data = self.context.memory.read(self.source, self.length)
            self.context.memory.write(self.destination, data)
            self.context.irq.pulse()

context.irq     an InterruptLine (None when the device was given no IRQ):
                set(level), high(), low(), pulse(); a level-triggered line,
                as an ISA IRQ or a PCI INTx pin is. On a machine, ISA IRQs
                (0-15) follow the level exactly (KVM_IRQ_LINE); IOAPIC-only
                GSIs (16 and up) are irqfds KVM resamples at each EOI (no
                ioctl per interrupt; raised again while the line stays high).
context.memory  guest RAM by guest-physical address: read(addr, n),
                write(addr, data), view(addr, n) (a zero-copy memoryview),
                read_u16/u32/u64, write_u16/u32/u64, contains(addr, n). Every
                access is checked against guest RAM and raises
                GuestMemoryError outside it; nothing else is reachable.
context.worker  the device's own thread (started when the run starts, or
                on first use before): call(fn,
                *args) runs fn there soon, call_later(seconds, fn, *args)
                later (cancel() on the handle; cancelled timers are
                dropped, not kept until their time), watch(fd, fn) calls fn()
                whenever fd is readable. Callbacks run one at a time, in
                order; an exception in one ends the run as a device failure
                naming the device. The thread ends when the machine closes.
                The machine holds it (held(): no callback runs) while it
                takes or puts back a snapshot or a checkpoint.
context.fail(message)  ends the run as a device failure (status 125).
context.registers  the RegisterState of the device's bus range: where a
                device that declared posted_writes or cached_reads publishes
                what may be posted or cached now (pyvmm/devices/delivery.py).

Threads: register accesses arrive on the vCPU threads, callbacks on the
worker; a device that uses both takes its own lock. Nothing here knows KVM:
the machine backs the line with KVM (pyvmm.machine), a test backs it with
a recorder, and `pyvmm.testing` runs devices with a context and no VM.
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import os
import selectors
import threading
from time import monotonic
from typing import Any, Callable, Optional

from .bus import DeviceFailure


class InterruptLine:
    """A level-triggered interrupt line driven by one device.

    `drive(level)` is what actually moves the line (KVM_IRQ_LINE, an irqfd,
    a test's recorder); it is called only when the level changes, under the
    line's lock, so it sees the levels in the order the device set them.
    """

    def __init__(self, drive: Callable[[bool], None], name: str = "") -> None:
        self._drive = drive
        self.name = name
        self.level = False
        self._lock = threading.Lock()

    def set(self, level: bool) -> None:
        level = bool(level)
        with self._lock:
            if level != self.level:
                self.level = level
                self._drive(level)

    def high(self) -> None:
        self.set(True)

    def low(self) -> None:
        self.set(False)

    def pulse(self) -> None:
        """An edge: high, then low (an edge-triggered interrupt)."""
        with self._lock:
            if not self.level:
                self._drive(True)
            self._drive(False)
            self.level = False

    def __repr__(self) -> str:
        return f"InterruptLine({self.name!r}, level={int(self.level)})"


# Cancelled timers are dropped from the queue once they are this many and
# half of it: a device that re-arms a far timer at each register write
# (the RTC's alarm) would otherwise keep every old one until its due time.
COMPACT_CANCELLED = 32


class Timer:
    """A call_later handle: cancel() before it runs and it never does."""

    __slots__ = ("when", "fn", "args", "cancelled", "_worker")

    def __init__(self, when: float, fn: Callable, args: tuple) -> None:
        self.when, self.fn, self.args, self.cancelled = when, fn, args, False
        self._worker: Optional["DeviceWorker"] = None     # while it is queued there

    def cancel(self) -> None:
        worker = self._worker
        if worker is None:
            self.cancelled = True
        else:
            worker._cancel(self)


class DeviceWorker:
    """One thread running a device's callbacks in order, off the vCPU threads.

    call() and call_later() may be used from any thread, the worker's
    included; watch()/unwatch() too. `on_error(exception)` hears a callback
    that raised; the worker stops then (what the device left half done is
    not run again).

    `catch_up()`, when given, runs before every callback: the machine
    delivers there the guest's writes still queued for their devices
    (pyvmm/run/deferred.py), so work done here sees the guest's register
    writes in the order it made them relative to the guest memory it reads
    (a virtio console's output stays behind the UART output printed first).
    With a `sandbox` (pyvmm.sandbox) the thread confines itself to `role` first.
    """

    def __init__(self, name: str, on_error: Optional[Callable[[BaseException], None]] = None,
                 catch_up: Optional[Callable[[], None]] = None, sandbox: Any = None,
                 role: str = "device") -> None:
        self.name = name
        self.on_error = on_error
        self.catch_up = catch_up
        self.sandbox, self.role = sandbox, role
        self._lock = threading.Lock()
        self._calls: list = []                # (fn, args), in order
        self._timers: list = []               # heap of (when, seq, Timer)
        self._cancelled = 0                   # cancelled Timers still in it
        self._in_hand = 0                     # taken off the queue, not yet all run
        self._seq = itertools.count()
        self._watches: dict = {}              # fd -> fn
        self._selector = selectors.DefaultSelector()
        self._wake = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
        self._selector.register(self._wake, selectors.EVENT_READ)
        self._closing = False
        # Held while a callback runs, and by held(); reentrant so that the
        # holder may unwatch() (which waits for a running callback) meanwhile.
        self._running = threading.RLock()
        self._thread = threading.Thread(target=self._loop, name=f"pyvmm-dev-{name}", daemon=True)
        self._thread.start()

    # --- from any thread --------------------------------------------------------
    def call(self, fn: Callable, *args: Any) -> None:
        with self._lock:
            if self._closing:
                return
            self._calls.append((fn, args))
        self._poke()

    def call_later(self, delay: float, fn: Callable, *args: Any) -> Timer:
        timer = Timer(monotonic() + max(0.0, delay), fn, args)
        with self._lock:
            if not self._closing:
                timer._worker = self
                heapq.heappush(self._timers, (timer.when, next(self._seq), timer))
        self._poke()
        return timer

    def queued_timers(self) -> int:
        """Timers waiting in the queue (cancelled ones not yet dropped included)."""
        with self._lock:
            return len(self._timers)

    def _cancel(self, timer: Timer) -> None:
        with self._lock:
            if timer.cancelled:
                return
            timer.cancelled = True
            if timer._worker is not self:
                return                        # already taken off the queue
            self._cancelled += 1
            if self._cancelled >= COMPACT_CANCELLED and 2 * self._cancelled >= len(self._timers):
                for _, _, dropped in self._timers:
                    if dropped.cancelled:
                        dropped._worker = None
                self._timers = [entry for entry in self._timers if not entry[2].cancelled]
                heapq.heapify(self._timers)
                self._cancelled = 0

    def watch(self, fd: int, fn: Callable[[], None]) -> None:
        """fn() on the worker whenever fd is readable (until unwatch(fd))."""
        with self._lock:
            if self._closing:
                return
            if fd in self._watches:
                self._selector.modify(fd, selectors.EVENT_READ)
            else:
                self._selector.register(fd, selectors.EVENT_READ)
            self._watches[fd] = fn
        self._poke()

    def unwatch(self, fd: int) -> None:
        """Stops watching fd; once it returns (off the worker), fd's callback
        is not running and will not run again."""
        with self._lock:
            if self._watches.pop(fd, None) is not None and not self._closing:
                self._selector.unregister(fd)
        self._poke()
        if not self.on_worker:
            with self._running:
                pass

    @property
    def on_worker(self) -> bool:
        return threading.current_thread() is self._thread

    def settle(self, timeout: float = 5.0) -> bool:
        """Waits until the callbacks queued so far have run (a snapshot then
        sees the state they left); True when they have, or the worker ended."""
        if self.on_worker:
            return True
        done = threading.Event()
        with self._lock:
            if self._closing:
                return True
            idle = self._idle()
            if not idle:
                self._calls.append((done.set, ()))
        if idle:                        # no trip to the worker (a reset stays fast): only
            if not self._running.acquire(timeout=timeout):      # a watched fd's callback may run
                return False
            self._running.release()
            return True
        self._poke()
        return done.wait(timeout)

    @contextlib.contextmanager
    def held(self):
        """No callback runs on the worker during the block (one running
        finishes first); what comes due meanwhile runs afterwards. Not from
        the worker itself (it would wait for itself)."""
        if self.on_worker:
            raise RuntimeError(f"worker {self.name} cannot hold itself")
        with self._running:
            yield

    def close(self) -> None:
        """Stops the thread (callbacks not yet run are dropped) and joins it,
        unless called from a callback: the thread then ends after it."""
        with self._lock:
            if self._closing:
                return
            self._closing = True
        self._poke()
        if not self.on_worker:
            self._thread.join()

    # --- the thread ------------------------------------------------------------
    def _poke(self) -> None:
        with self._lock:              # the eventfd is closed under this lock
            if self._wake >= 0:
                os.eventfd_write(self._wake, 1)

    def _catch_up(self) -> None:
        if self.catch_up is not None:
            self.catch_up()

    def _next_timeout(self) -> Optional[float]:
        with self._lock:
            if self._calls:
                return 0.0
            if not self._timers:
                return None
            return max(0.0, self._timers[0][0] - monotonic())

    def _idle(self) -> bool:
        """No call queued or in hand, no timer due (lock held)."""
        return not self._calls and not self._in_hand and not (self._timers and self._timers[0][0] <= monotonic())

    def _due(self) -> list:
        now = monotonic()
        with self._lock:
            due, self._calls = self._calls, []
            while self._timers and self._timers[0][0] <= now:
                timer = heapq.heappop(self._timers)[2]
                timer._worker = None
                if timer.cancelled:
                    self._cancelled -= 1
                else:
                    due.append((timer.fn, timer.args))
            self._in_hand = len(due)
        return due

    def _loop(self) -> None:
        try:
            if self.sandbox is not None:
                self.sandbox.enter(self.role)
            while not self._closing:
                for key, _events in self._selector.select(self._next_timeout()):
                    if key.fd == self._wake:
                        try:
                            os.eventfd_read(self._wake)
                        except BlockingIOError:
                            pass
                        continue
                    with self._running:
                        fn = self._watches.get(key.fd)
                        if fn is not None and not self._closing:
                            self._catch_up()
                            fn()
                for fn, args in self._due():
                    if self._closing:
                        break
                    with self._running:
                        self._catch_up()
                        fn(*args)
                with self._lock:
                    self._in_hand = 0
        except BaseException as error:  # a device bug: report it, never a traceback
            with self._lock:
                self._closing = True
            if self.on_error is not None:
                self.on_error(error)
        finally:
            with self._lock:
                self._selector.close()
                os.close(self._wake)
                self._wake = -1


class DeviceContext:
    """A device's view of the machine (see the module docstring).

    `on_failure(message)` ends the run; the machine passes its own. The
    worker is created by start() or on first use, named after the device,
    and confined with `sandbox` if given.
    """

    def __init__(self, name: str, memory: Any, irq: Optional[InterruptLine] = None,
                 on_failure: Optional[Callable[[str], None]] = None, registers: Any = None,
                 catch_up: Optional[Callable[[], None]] = None, sandbox: Any = None) -> None:
        self.name = name
        self.memory = memory
        self.irq = irq
        self.registers = registers
        self._on_failure = on_failure
        self._catch_up = catch_up               # the worker's (see DeviceWorker)
        self._sandbox = sandbox
        self._worker: Optional[DeviceWorker] = None
        self._lock = threading.Lock()
        self._closed = False

    @property
    def worker(self) -> DeviceWorker:
        """The worker; once the context is closed, one that drops every call
        (a late notification must not start a thread nobody will join)."""
        with self._lock:
            if self._closed:
                return _CLOSED_WORKER
            if self._worker is None:
                self._worker = DeviceWorker(self.name, self._worker_failed, self._catch_up, self._sandbox)
            return self._worker

    def start(self) -> None:
        """Starts the worker now. The machine does so before the guest runs:
        a confined vCPU thread cannot create a thread (pyvmm.sandbox)."""
        self.worker

    def fail(self, message: str) -> None:
        """Ends the run as a failure of this device (status 125)."""
        if self._on_failure is not None:
            self._on_failure(f"device {self.name}: {message}")

    def _worker_failed(self, error: BaseException) -> None:
        if isinstance(error, DeviceFailure):       # it already names the device and the access
            if self._on_failure is not None:
                self._on_failure(str(error))
        else:
            self.fail(f"{type(error).__name__}: {error}")

    def settle(self, timeout: float = 5.0) -> bool:
        """Waits for the worker's queued callbacks (see DeviceWorker.settle)."""
        with self._lock:
            worker = self._worker
        return worker is None or worker.settle(timeout)

    @contextlib.contextmanager
    def held(self):
        """The worker, if started, runs no callback during the block
        (DeviceWorker.held)."""
        with self._lock:
            worker = self._worker
        if worker is None:
            yield
        else:
            with worker.held():
                yield

    def close(self) -> None:
        """Stops the worker, if one was started."""
        with self._lock:
            worker, self._worker = self._worker, None
            self._closed = True
        if worker is not None:
            worker.close()


class _ClosedWorker:
    """The worker of a closed context: calls go nowhere."""

    on_worker = False

    def call(self, fn: Callable, *args: Any) -> None:
        pass

    def call_later(self, delay: float, fn: Callable, *args: Any) -> Timer:
        timer = Timer(monotonic() + delay, fn, args)
        timer.cancel()
        return timer

    def watch(self, fd: int, fn: Callable[[], None]) -> None:
        pass

    def unwatch(self, fd: int) -> None:
        pass

    def close(self) -> None:
        pass


_CLOSED_WORKER = _ClosedWorker()
