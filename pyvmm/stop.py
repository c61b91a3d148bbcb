"""How a run ends: the first stop request wins; every vCPU thread watches it."""

import threading
from dataclasses import dataclass

# Exit statuses of `pyvmm run` (besides a debug-exit status).
STATUS_OK = 0
STATUS_TIMEOUT = 124
STATUS_CRASH = 125


@dataclass
class RunResult:
    status: int
    reason: str          # short tag: halt, debug-exit, reset, timeout, triple-fault, ...
    message: str = ""    # one line for the user when the guest crashed
    vcpu: int = None

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

    def request(self, status, reason, message="", vcpu=None):
        with self._lock:
            if self.result is None:
                self.result = RunResult(status, reason, message, vcpu)
                self.requested = True
        self.event.set()
