"""The vCPU run loop: KVM_RUN, then dispatch of every exit to the buses.

This is the readable reference path; pyvmm.run.fast runs the same loop with
its hot exits in C. Each exit reason ends in a defined way: port I/O and
MMIO go to the buses; halt, shutdown, failed entry, internal errors, system
events and unknown reasons stop the VM with a status (see stop.py).

The plain loop reads each exit with one struct unpack (ExitReader.header)
and builds no object for port I/O; the rare reasons are decoded in full
(pyvmm.kvm.exits). With hooks or tracing the observed loop builds an
ExitEvent per exit instead.
"""

from errno import EAGAIN, EINTR
from time import monotonic_ns

from ..devices.bus import ONE_BYTE
from ..kvm import KvmError
from ..kvm.exits import (EXIT_IO, EXIT_MMIO, IO_OUT, REASON_COUNT, DebugExit, FailEntryExit, HaltExit,
                         InternalErrorExit, MsrExit, OtherExit, ShutdownExit, SystemEventExit,
                         exit_reason_name)
from .hooks import ExitEvent, Hooks
from .stop import STATUS_CRASH, STATUS_OK

VALID_IO_SIZES = (1, 2, 4)
RFLAGS_IF = 1 << 9
# KVM_RUNs (with immediate_exit) that may finish the exit a stopped loop
# left: one, unless completing it starts another (a string I/O's next element).
FINISH_ATTEMPTS = 16


class LeaveRun(Exception):
    """Raised by a kick handler to make run() return at once: a kick handler
    runs with every exit completed, so nothing is left to finish."""


class VcpuLoop:
    """Runs one vCPU until the VM-wide StopSignal is raised (or a kick
    handler raises LeaveRun)."""

    def __init__(self, vcpu, port_bus, mmio_bus, stop, stats, hooks=None):
        self.vcpu = vcpu
        self.hooks = hooks if hooks is not None else Hooks()
        self.port_bus = port_bus
        self.mmio_bus = mmio_bus
        self.stop = stop
        self.stats = stats
        # Dormancy probes (see request_probe): the round asked for, the
        # round last answered, and the answer.
        self.probe_round = 0
        self.answered_round = 0
        self.dormant = False
        # A debugger (pyvmm.gdb): debug_handler(loop, exit) gets debug exits and
        # emulation failures first, True when it handled the exit.
        self.debug_handler = None
        # kick_handlers: each handler(loop) runs after every kick, on this
        # thread, with every exit completed (pause, the debugger).
        self.kick_handlers = []
        # KVM_RUN: 0 when an exit waits in kvm_run, else not an exit (-errno
        # after a kick); the fast path puts its C loop here.
        self.enter = vcpu.enter

    def request_probe(self, round_number):
        """Asks the vCPU thread whether its vCPU is dormant: halted with
        interrupts off, or waiting for a SIPI. With the in-kernel LAPIC a
        halt never exits to us, so the supervisor kicks the thread out of
        KVM_RUN (immediate_exit + a signal) and the thread looks for itself."""
        self.probe_round = round_number
        self.vcpu.set_immediate_exit()

    def _answer_probe(self):
        round_number = self.probe_round
        vcpu = self.vcpu
        state = vcpu.get_mp_state()
        if state == "halted":
            dormant = not vcpu.get_regs().rflags & RFLAGS_IF
        else:
            dormant = state in ("uninitialized", "init_received")
        self.dormant = dormant
        self.answered_round = round_number

    def run(self):
        """The loop; returns when the VM stops. Device errors propagate.

        With hooks (or tracing) the observed loop decodes each exit into an
        ExitEvent; without, the plain loop below pays nothing for them. When
        it returns, the vCPU's state in KVM is complete (finish_exit)."""
        left = False
        try:
            if self.hooks:
                return self._run_observed()
            return self._run_plain()
        except LeaveRun:
            left = True
            return None
        finally:
            if not left:
                self.finish_exit()

    def finish_exit(self):
        """Completes, in KVM, the instruction of the exit the loop stopped at:
        KVM's registers are consistent only after the vCPU re-entered KVM_RUN
        (KVM's API), which immediate_exit makes return without running the
        guest. An exit the completion starts (the next element of a string
        I/O) is dropped: the run is over. Call it on the vCPU's own thread."""
        vcpu = self.vcpu
        vcpu.set_immediate_exit(True)
        try:
            for _ in range(FINISH_ATTEMPTS):
                if vcpu.enter() != 0:            # -EINTR: nothing more in flight
                    break
        finally:
            vcpu.set_immediate_exit(False)

    def exit_held(self):
        """Whether an exit KVM returned still waits to be handled (the loop may
        not leave then, stop or not); the fast path's C loop can hold one."""
        return False

    def _interrupted(self, ret):
        """enter() returned no exit: a kick (answer a probe if one is asked) or a failure."""
        if ret != -EINTR and ret != -EAGAIN:
            raise KvmError("KVM_RUN", -ret, f"vCPU {self.vcpu.index}")
        self.stats.interrupted += 1
        self.vcpu.set_immediate_exit(False)
        if self.probe_round != self.answered_round:
            self._answer_probe()
        for handler in self.kick_handlers:
            handler(self)

    def _run_plain(self):
        vcpu, stop, stats = self.vcpu, self.stop, self.stats
        buf = vcpu.run_buffer
        run_size = vcpu.run_size
        enter, header, held = self.enter, vcpu.exits.header, self.exit_held
        port_read, port_write = self.port_bus.read, self.port_bus.write
        reasons, ports = stats.reasons, stats.ports
        while not stop.requested or held():
            ret = enter()
            if ret:
                self._interrupted(ret)
                continue
            reason, direction, size, port, count, offset = header()
            if reason < REASON_COUNT:
                reasons[reason] += 1
            if reason == EXIT_IO:
                key = port << 1 | direction
                if key in ports:
                    ports[key] += count
                else:
                    stats.count_port(key, count)
                if count == 1 and size in VALID_IO_SIZES and offset + size <= run_size:
                    if direction == IO_OUT:
                        if size == 1:   # the common case: no slice, no copy
                            port_write(port, ONE_BYTE[buf[offset]])
                        else:
                            port_write(port, bytes(buf[offset:offset + size]))
                    else:
                        buf[offset:offset + size] = port_read(port, size)
                else:
                    self._string_io(direction, size, port, count, offset)
            elif reason == EXIT_MMIO:
                self._mmio()
            else:
                self._other()

    # --- the observed loop: hooks and tracing ---------------------------------
    def _run_observed(self):
        vcpu, stop, stats = self.vcpu, self.stop, self.stats
        rip = vcpu.synced_rip().read      # RIP with every exit, no extra ioctl
        header = vcpu.exits.header
        seq = 0
        while not stop.requested:
            ret = vcpu.enter()
            if ret < 0:
                self._interrupted(ret)
                continue
            reason, direction, size, port, count, offset = header()
            if reason < REASON_COUNT:
                stats.reasons[reason] += 1
            seq += 1
            event = ExitEvent(seq, vcpu.index, monotonic_ns(), exit_reason_name(reason), rip())
            if reason == EXIT_IO:
                self._observe_io(event, direction, size, port, count, offset)
            elif reason == EXIT_MMIO:
                self._observe_mmio(event)
            else:
                self._before(event)
                self._other()
                _call_hooks(self.hooks.after, event)
            if event.stop_request is not None:
                self._hook_stop(event)

    def _before(self, event):
        """The before hooks. A stop one asks for is requested at once, so it
        wins over the one the exit itself may cause (a debug-exit write)."""
        _call_hooks(self.hooks.before, event)
        if event.stop_request is not None:
            self._hook_stop(event)

    def _hook_stop(self, event):
        status, message = event.stop_request
        self.stop.request(status, "hook", message, vcpu=self.vcpu.index)

    def _observe_io(self, event, direction, size, port, count, offset):
        self.stats.count_port(port << 1 | direction, count)
        if size not in VALID_IO_SIZES or count < 1 or offset + size * count > self.vcpu.run_size:
            self._crash("bad-io", f"malformed port I/O exit (port {port:#x}, size {size}, count {count})")
            return
        buf = self.vcpu.run_buffer
        event.port, event.size, event.count = port, size, count
        writing = direction == IO_OUT
        event.direction = "out" if writing else "in"
        if writing:
            event.data = bytes(buf[offset:offset + size * count])
        self._perform(event, size * count, self.port_bus, port)
        if not writing:
            buf[offset:offset + size * count] = event.data

    def _observe_mmio(self, event):
        mmio = self._mmio_exit()
        if mmio is None:
            return
        addr, data, length, is_write = mmio
        event.address, event.size = addr, length
        event.direction = "write" if is_write else "read"
        if is_write:
            event.data = data[:length]
        self._perform(event, length, self.mmio_bus, addr)
        if not is_write:
            self.vcpu.exits.set_mmio_data(event.data)

    def _perform(self, event, total, bus, addr):
        """Before hooks, the bus accesses (one per element), after hooks."""
        self._before(event)
        started = monotonic_ns()
        size = event.size
        if event.is_read:
            if not event.handled:
                event.data = b"".join(bus.read(addr, size) for _ in range(event.count))
        elif not event.handled:
            _check_length(event, total)
            for start in range(0, total, size):
                bus.write(addr, event.data[start:start + size])
        event.handle_ns = monotonic_ns() - started
        _call_hooks(self.hooks.after, event)
        if event.is_read:
            _check_length(event, total)

    # --- the less frequent exits ------------------------------------------------
    def _string_io(self, direction, size, port, count, offset):
        """`rep ins/outs` with count > 1: one bus access per element, in order."""
        if size not in VALID_IO_SIZES or count < 1 or offset + size * count > self.vcpu.run_size:
            self._crash("bad-io", f"malformed port I/O exit (port {port:#x}, size {size}, count {count})")
            return
        buf = self.vcpu.run_buffer
        for element in range(offset, offset + size * count, size):
            if direction == IO_OUT:
                self.port_bus.write(port, bytes(buf[element:element + size]))
            else:
                buf[element:element + size] = self.port_bus.read(port, size)

    def _mmio(self):
        mmio = self._mmio_exit()
        if mmio is None:
            return
        addr, data, length, is_write = mmio
        if is_write:
            self.mmio_bus.write(addr, data[:length])
        else:
            self.vcpu.exits.set_mmio_data(self.mmio_bus.read(addr, length))

    def _mmio_exit(self):
        """The MMIO exit (address, data, length, is_write), counted; None when
        KVM gave a length no access has (the run then ends as a crash)."""
        addr, data, length, is_write = mmio = self.vcpu.exits.mmio()
        self.stats.count_mmio(addr << 1 | (1 if is_write else 0))
        if not 1 <= length <= 8:
            self._crash("bad-mmio", f"malformed MMIO exit at {addr:#x} (length {length})")
            return None
        return mmio

    def _other(self):
        exit = self.vcpu.exits.decode()
        if self.debug_handler is not None and isinstance(exit, (DebugExit, InternalErrorExit)) \
                and self.debug_handler(self, exit):
            return
        index = self.vcpu.index
        if isinstance(exit, HaltExit):
            self.stop.request(STATUS_OK, "halt", vcpu=index)
        elif isinstance(exit, ShutdownExit):
            self._crash("triple-fault", "guest triple fault (shutdown)" + self._where())
        elif isinstance(exit, FailEntryExit):
            self._crash("fail-entry", "KVM could not enter the guest (hardware entry failure "
                        f"reason {exit.hardware_reason:#x})")
        elif isinstance(exit, InternalErrorExit):
            self._crash("internal-error", f"KVM internal error: {exit.description}" + self._where())
        elif isinstance(exit, SystemEventExit):
            if exit.event in ("shutdown", "reset"):
                self.stop.request(STATUS_OK, "poweroff" if exit.event == "shutdown" else "reset", vcpu=index)
            elif exit.event == "crash":
                self._crash("guest-crash", "the guest reported a crash (system event)")
            else:
                self._crash(f"system-event-{exit.event}", f"unhandled system event {exit.event}")
        elif isinstance(exit, MsrExit):
            self.vcpu.exits.fail_msr()      # #GP, as for an MSR the CPU does not have
        elif isinstance(exit, OtherExit) and exit.is_benign:
            pass
        else:
            self._crash("unhandled-exit", f"unhandled exit reason {exit.reason} "
                        f"({exit.name})" + self._where())

    def _where(self):
        try:
            return f" at rip={self.vcpu.get_regs().rip:#x}"
        except KvmError:
            return ""

    def _crash(self, tag, message):
        self.stop.request(STATUS_CRASH, tag, f"vCPU {self.vcpu.index}: {message}", vcpu=self.vcpu.index)


def _call_hooks(hooks, event):
    for hook in hooks:
        if hook.wants(event):
            hook.callback(event)


def _check_length(event, total):
    if event.data is None or len(event.data) != total:
        raise ValueError(f"exit hook left {0 if event.data is None else len(event.data)} bytes "
                         f"of data for a {total}-byte access")
