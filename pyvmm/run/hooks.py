"""Exit hooks: Python callables that see every VM exit they asked for.

    def log_uart(event):
        print(event.seq, event.direction, event.data)

    machine.add_hook(log_uart, when="after", reasons={"io"}, ports=range(0x3F8, 0x400))

A "before" hook runs before the exit is handled: it may change the data a
guest writes (`event.data = ...`), answer a guest read itself
(`event.reply(data)`: the device is not called), or stop the VM
(`event.stop(status)`: the run ends with this status, whatever the exit
itself does, e.g. a debug-exit write). An "after" hook runs once the devices handled it and
may change the data returned to the guest by a read. Hooks run on the vCPU
thread of the exit, in the order they were added; they must be registered
before Machine.run(). A VM without hooks or tracing runs the plain loop,
which pays nothing for them.
"""

WHEN = ("before", "after")


class ExitEvent:
    """One VM exit, decoded. Port I/O: port, size, direction ("in"/"out"),
    count, data. MMIO: address, size, direction ("read"/"write"), data.
    Always: seq (per vCPU), vcpu, time_ns (monotonic), reason, rip."""

    __slots__ = ("seq", "vcpu", "time_ns", "reason", "rip", "port", "address", "size",
                 "direction", "count", "data", "handled", "stop_request", "handle_ns")

    def __init__(self, seq, vcpu, time_ns, reason, rip):
        self.seq, self.vcpu, self.time_ns, self.reason, self.rip = seq, vcpu, time_ns, reason, rip
        self.port = self.address = self.size = self.direction = self.data = None
        self.count = 1
        self.handled = False
        self.stop_request = None
        self.handle_ns = 0

    @property
    def is_read(self):
        return self.direction in ("in", "read")

    def reply(self, data):
        """Answers a read without calling the device (before hooks)."""
        if not self.is_read:
            raise ValueError("reply() answers reads; change event.data to alter a write")
        self.data = bytes(data)
        self.handled = True

    def stop(self, status=0, message=""):
        """Ends the run with `status` once this exit is done; from a before
        hook, the status wins over one the exit itself sets (debug-exit)."""
        self.stop_request = (status, message)

    def as_dict(self):
        record = {"seq": self.seq, "vcpu": self.vcpu, "t_ns": self.time_ns, "reason": self.reason,
                  "rip": self.rip}
        if self.port is not None:
            record.update(port=self.port, size=self.size, dir=self.direction, count=self.count)
        elif self.address is not None:
            record.update(addr=self.address, size=self.size, dir=self.direction)
        if self.data is not None:
            record["data"] = self.data.hex()
        record["handle_ns"] = self.handle_ns
        return record


class Hook:
    __slots__ = ("callback", "when", "reasons", "ports", "mmio")

    def __init__(self, callback, when, reasons, ports, mmio):
        if when not in WHEN:
            raise ValueError(f"a hook runs 'before' or 'after' an exit, not {when!r}")
        if not callable(callback):
            raise TypeError("a hook must be callable")
        self.callback = callback
        self.when = when
        self.reasons = None if reasons is None else frozenset(reasons)
        self.ports = ports
        self.mmio = mmio

    def wants(self, event):
        if self.reasons is not None and event.reason not in self.reasons:
            return False
        if self.ports is not None and (event.port is None or event.port not in self.ports):
            return False
        if self.mmio is not None and (event.address is None or event.address not in self.mmio):
            return False
        return True


class Hooks:
    """The hooks of one Machine, with the before/after lists the loop walks."""

    def __init__(self):
        self.before = []
        self.after = []

    def add(self, callback, when="after", reasons=None, ports=None, mmio=None):
        """Registers `callback(event)`; `reasons` (exit reason names such as
        "io", "mmio", "hlt"), `ports` and `mmio` (ranges, or anything with
        `in`) narrow what it sees. Returns the hook, for remove()."""
        hook = Hook(callback, when, reasons, ports, mmio)
        (self.before if when == "before" else self.after).append(hook)
        return hook

    def remove(self, hook):
        (self.before if hook.when == "before" else self.after).remove(hook)

    def __bool__(self):
        return bool(self.before or self.after)
