"""How a run ends: the first stop request wins; every vCPU thread watches it."""

import threading

# Exit statuses of `pyvmm run` (besides a debug-exit status).
STATUS_OK = 0
STATUS_TIMEOUT = 124
STATUS_CRASH = 125


class RunResult:
    """How a run ended: exit status, a short reason tag, a one-line message."""

    def __init__(self, status, reason, message="", vcpu=None):
        self.status = status
        self.reason = reason      # halt, debug-exit, reset, timeout, triple-fault, ...
        self.message = message    # one line for the user when the guest crashed
        self.vcpu = vcpu

    def __repr__(self):
        return (f"RunResult(status={self.status}, reason={self.reason!r}, "
                f"message={self.message!r}, vcpu={self.vcpu})")

    @property
    def crashed(self):
        return self.status == STATUS_CRASH


class StopSignal:
    """Set once, from any thread; `requested` is a plain attribute for the hot loop."""

    def __init__(self):
        self.requested = False
        self.result = None
        self._lock = threading.Lock()
        self.event = threading.Event()
        self.on_clear = []          # callables clear() calls (the fast path's flag)

    def clear(self):
        """Unsets it, for a machine reset to a checkpoint that runs on."""
        with self._lock:
            self.result = None
            self.requested = False
            self.event.clear()
        for callback in self.on_clear:
            callback()

    def request(self, status, reason, message="", vcpu=None):
        with self._lock:
            if self.result is None:
                self.result = RunResult(status, reason, message, vcpu)
                self.requested = True
        self.event.set()
