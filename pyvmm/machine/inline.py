"""Running a one-vCPU machine on the calling thread, a stretch at a time
(Machine.run_until_pause): for snapshot fuzzing, where each example runs the
guest from a checkpoint to its next park, and a hand-off to a vCPU thread and
back would cost more than the example (a Condition round trip between two
Python threads is about 50 us here).

A stretch ends when a pause is asked for (Machine.request_pause, e.g. by a
device the guest writes to: the vCPU's next KVM_RUN then completes the exit
and returns at once), when the guest ends the run, or at the timeout: a
watchdog thread, polling every WATCHDOG_POLL s (so arming it costs nothing),
asks for the pause and kicks the thread out of KVM_RUN.
"""

import signal
import threading
from time import monotonic, sleep

from ..run.loop import LeaveRun
from ..run.stop import STATUS_TIMEOUT, RunResult
from .vcpus import KICK_SIGNAL, install_kick_signal

WATCHDOG_POLL = 0.01
WATCHDOG_IDLE = 1.0          # the thread ends after this long with no stretch to watch
PAUSED = "paused"


class InlineRunner:
    """The loop of a machine's one vCPU, run on whichever thread calls run()."""

    def __init__(self, machine, loop):
        self.machine = machine
        self.loop = loop
        self._lock = threading.Lock()
        self._pause_asked = False
        self._timed_out = False
        self._deadline = None
        self._thread_ident = None
        self._closing = False
        self._watchdog = None
        self._last_armed = 0.0
        loop.kick_handlers.append(self._kicked)

    @property
    def running(self):
        return self._thread_ident is not None

    def run(self, timeout=None):
        """A RunResult: reason "paused" (status None) after a pause, "timeout"
        (124, the machine paused there) or how the guest ended the run."""
        install_kick_signal()
        with self._lock:
            self._pause_asked = self._timed_out = False
            self._thread_ident = threading.get_ident()
            self._deadline = None if timeout is None else monotonic() + timeout
        if timeout is not None:
            self._start_watchdog()
        try:
            result = self.loop.run()
        finally:
            with self._lock:
                self._thread_ident = None
                self._deadline = None
        if self.machine.stop.requested:
            return self.machine.stop.result
        if self._timed_out:
            return RunResult(STATUS_TIMEOUT, "timeout", f"no pause within {timeout:g} s")
        assert result is None
        return RunResult(None, PAUSED)

    def request_pause(self):
        """From any thread, the running one included."""
        with self._lock:
            self._pause_asked = True
            self.loop.vcpu.set_immediate_exit()
            ident = self._thread_ident
        if ident is not None and ident != threading.get_ident():
            try:
                signal.pthread_kill(ident, KICK_SIGNAL)
            except ProcessLookupError:
                pass

    def _kicked(self, loop):
        with self._lock:
            asked, self._pause_asked = self._pause_asked, False
        if asked:
            raise LeaveRun()

    # --- the watchdog ---------------------------------------------------------------------
    def _start_watchdog(self):
        with self._lock:
            self._last_armed = monotonic()
            if self._watchdog is not None and self._watchdog.is_alive():
                return
            self._watchdog = threading.Thread(target=self._watch, name="pyvmm-watchdog", daemon=True)
            self._watchdog.start()

    def _watch(self):
        sandbox = getattr(self.machine, "sandbox", None)
        if sandbox is not None and not sandbox.confine("watchdog"):
            return
        while not self._closing:
            sleep(WATCHDOG_POLL)
            with self._lock:
                now = monotonic()
                due = self._deadline is not None and now >= self._deadline
                if due:
                    self._deadline = None
                    self._timed_out = True
                elif self._deadline is None and now - self._last_armed > WATCHDOG_IDLE:
                    self._watchdog = None            # idle: the next stretch starts another
                    return
            if due:
                self.request_pause()

    def close(self):
        self._closing = True
        with self._lock:
            watchdog, self._watchdog = self._watchdog, None
        if watchdog is not None:
            watchdog.join()
