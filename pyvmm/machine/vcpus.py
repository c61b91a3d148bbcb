"""The vCPU threads of a machine: started together, kicked out of KVM_RUN,
probed for dormancy, paused and resumed at an exit boundary, suspended (ACPI
S3) and woken with their state reset, supervised (timeout, periodic flush,
the end of a run), stopped and joined.

A kick is immediate_exit plus a signal (KICK_SIGNAL, whose handler does
nothing): KVM_RUN then returns EINTR, every exit in flight has completed and
the registers are consistent, and the loop runs its kick handlers.
"""

import signal
import threading
from time import monotonic

from ..devices import DeviceFailure
from ..kvm import install_kick_handler
from ..run.stop import STATUS_CRASH, STATUS_OK, STATUS_TIMEOUT

KICK_SIGNAL = signal.SIGRTMIN + 2
FLUSH_INTERVAL = 0.05
# Dormancy probes start fast (a tiny guest halts within milliseconds) and
# back off; a run ends after two rounds in a row found every vCPU dormant.
FIRST_PROBE, LAST_PROBE, PROBE_BACKOFF = 0.001, 0.05, 1.25
DORMANT_ROUNDS_TO_STOP = 2
_kick_installed = False


def install_kick_signal():
    """The (process-wide) handler of KICK_SIGNAL, installed once."""
    global _kick_installed
    if not _kick_installed:
        install_kick_handler(KICK_SIGNAL)
        _kick_installed = True


class VcpuManager:
    """Runs `loops` (one per vCPU) on their own threads until `stop` is set.

    `flush()` is called every FLUSH_INTERVAL while the vCPUs run (console
    output, deferred writes). A loop that raises (a pyvmm or device bug)
    ends the run as an internal error.
    """

    def __init__(self, loops, stop, flush=lambda: None):
        self.loops = list(loops)
        self.stop = stop
        self.flush = flush
        self._threads = []
        self._pause = threading.Condition()
        self._paused = False
        self._suspended = False               # ACPI S3: parked until wake(), whatever resume() says
        self._parked = set()
        self._ended = set()                   # indices whose loop returned (a thread not yet started has not)
        for loop in self.loops:
            loop.kick_handlers.append(self._pause_point)

    # --- threads --------------------------------------------------------------------
    def start(self, paused=False):
        """Starts the threads; paused: each parks before entering the guest."""
        install_kick_signal()
        if paused:
            self._paused = True
            for loop in self.loops:
                loop.vcpu.set_immediate_exit()
        self._threads = [threading.Thread(target=self._run, args=(loop,), name=f"pyvmm-vcpu{loop.vcpu.index}")
                         for loop in self.loops]
        for thread in self._threads:
            thread.start()

    @property
    def running(self):
        return bool(self._threads)

    def _run(self, loop):
        try:
            loop.run()
        except DeviceFailure as failure:
            self.stop.request(STATUS_CRASH, "device-failure", str(failure), vcpu=loop.vcpu.index)
        except Exception as error:  # a pyvmm bug: end the run, never a traceback
            self.stop.request(STATUS_CRASH, "internal-error",
                              f"vCPU {loop.vcpu.index}: pyvmm internal error: "
                              f"{type(error).__name__}: {error}", vcpu=loop.vcpu.index)
        finally:
            with self._pause:
                self._ended.add(loop.vcpu.index)
                self._pause.notify_all()

    def kick(self, index):
        """Makes vCPU `index` leave KVM_RUN (its loop then runs its kick handlers)."""
        self.loops[index].vcpu.set_immediate_exit()
        if index < len(self._threads) and self._threads[index].is_alive():
            self._signal(self._threads[index])

    @staticmethod
    def _signal(thread):
        try:
            signal.pthread_kill(thread.ident, KICK_SIGNAL)
        except ProcessLookupError:
            pass

    def stop_all(self):
        """Ends the run (if nothing ended it yet) and joins every vCPU thread."""
        self.stop.request(STATUS_CRASH, "stopped", "the VMM stopped the run")
        with self._pause:
            self._pause.notify_all()
        for loop, thread in zip(self.loops, self._threads):
            while thread.is_alive():
                loop.vcpu.set_immediate_exit()
                self._signal(thread)
                thread.join(0.01)
        self._threads = []

    # --- pause ----------------------------------------------------------------------
    def pause(self, timeout=5.0):
        """Stops every vCPU at an exit boundary (outside KVM_RUN, every exit
        completed) until resume(). True once all are parked (or ended)."""
        self.request_pause()
        return self.wait_paused(timeout)

    def request_pause(self):
        """Asks every vCPU to park at its next exit boundary, without waiting
        (so a device may ask, on a vCPU thread)."""
        with self._pause:
            self._paused = True
        for index in range(len(self.loops)):
            self.kick(index)

    def wait_paused(self, timeout=5.0):
        """True once every vCPU is parked (or ended), False after `timeout`."""
        deadline = monotonic() + timeout
        with self._pause:
            while not self._all_parked():
                left = deadline - monotonic()
                if left <= 0 or self.stop.requested:
                    return self._all_parked()
                self._pause.wait(left)
        return True

    def _all_parked(self):
        return all(loop.vcpu.index in self._parked or loop.vcpu.index in self._ended for loop in self.loops)

    def resume(self):
        with self._pause:
            self._paused = False
            self._pause.notify_all()

    @property
    def paused(self):
        return self._paused

    def parked_vcpus(self):
        """The indices of the vCPUs parked now."""
        with self._pause:
            return set(self._parked)

    @property
    def parked(self):
        """Whether every vCPU is parked now (a pause in force, not only asked)."""
        with self._pause:
            return self._paused and self._all_parked()

    def _pause_point(self, loop):
        """A kick handler: parks the vCPU's thread while the machine is paused or suspended."""
        with self._pause:
            if not (self._paused or self._suspended):
                return
            self._parked.add(loop.vcpu.index)
            self._pause.notify_all()
            while (self._paused or self._suspended) and not self.stop.requested:
                self._pause.wait()
            self._parked.discard(loop.vcpu.index)

    # --- ACPI S3 --------------------------------------------------------------------
    def suspend(self):
        """Parks every vCPU at its next exit boundary until wake(); returns at
        once, so a vCPU thread may call it (from the exit that asked for S3)."""
        with self._pause:
            self._suspended = True
        for index in range(len(self.loops)):
            self.kick(index)

    @property
    def suspended(self):
        return self._suspended

    def wake(self, prepare):
        """Waits until every vCPU is parked, calls prepare() (which resets
        their state; the vCPUs are outside KVM_RUN), and lets them run when
        it returns True. Not from a vCPU thread. False when the run ended
        first (stop_all() wakes the wait) or prepare() said no."""
        with self._pause:
            while not self._all_parked():
                if self.stop.requested:
                    return False
                self._pause.wait(FLUSH_INTERVAL)
        if self.stop.requested or not prepare():
            return False
        with self._pause:
            self._suspended = False
            self._pause.notify_all()
        return True

    # --- supervision ---------------------------------------------------------------
    def supervise(self, timeout=None):
        """Waits for the stop, flushing, enforcing the timeout and ending the
        run once every vCPU is dormant (halted with interrupts off, or waiting
        for a SIPI, two probe rounds in a row; never while suspended, when a
        wake event may still come)."""
        deadline = None if timeout is None else monotonic() + timeout
        probe_interval, next_probe, next_flush = FIRST_PROBE, monotonic() + FIRST_PROBE, 0.0
        probe_round, dormant_rounds = 0, 0
        while not self.stop.event.is_set():
            now = monotonic()
            if deadline is not None and now >= deadline:
                self.stop.request(STATUS_TIMEOUT, "timeout", f"timed out after {timeout:g} s")
                break
            if now >= next_flush:
                self.flush()
                next_flush = now + FLUSH_INTERVAL
            if now >= next_probe and not (self._paused or self._suspended):
                if probe_round and all(loop.answered_round == probe_round and loop.dormant
                                       for loop in self.loops):
                    dormant_rounds += 1
                    if dormant_rounds >= DORMANT_ROUNDS_TO_STOP:
                        self.stop.request(STATUS_OK, "halt")
                        break
                else:
                    dormant_rounds = 0
                probe_round += 1
                for index, loop in enumerate(self.loops):
                    loop.request_probe(probe_round)
                    if index < len(self._threads):
                        self._signal(self._threads[index])
                probe_interval = min(probe_interval * PROBE_BACKOFF, LAST_PROBE)
                next_probe = now + probe_interval
            wake = min(next_flush, next_probe, deadline or next_probe)
            self.stop.event.wait(max(0.0, wake - monotonic()))
