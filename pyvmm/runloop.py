"""The vCPU run loop: KVM_RUN, then dispatch of every exit to the buses.

This is the readable reference path. Each exit reason ends in a defined
way: port I/O and MMIO go to the buses; halt, shutdown, failed entry,
internal errors, system events and unknown reasons stop the VM with a
status (see stop.py). Exit headers are unpacked with struct from the
shared kvm_run page at offsets the C compiler reported, which is cheaper
per exit than reading the fields one by one through cffi.
"""

import struct
from time import monotonic_ns

from ._kvm import ffi, lib
from .hooks import ExitEvent, Hooks
from .kvm import KvmError, exit_reason_name
from .stop import STATUS_CRASH, STATUS_OK

_UNION = ffi.offsetof("struct kvm_run", "io")
_REASON_OFFSET = ffi.offsetof("struct kvm_run", "exit_reason")
# exit_reason, then the io member of the union: direction, size, port,
# count, data_offset. One unpack per exit (the io fields are ignored for
# other reasons).
_EXIT_IO = struct.Struct(f"<I{_UNION - _REASON_OFFSET - 4}xBBHIQ")
_MMIO = struct.Struct("<Q8sIB")         # phys_addr, data, len, is_write
_MMIO_DATA = _UNION + 8
_RIP = struct.Struct("<Q")
_SYNC_RIP = lib.pyvmm_sync_regs_offset() + ffi.offsetof("struct kvm_regs", "rip")


def _check_layout():
    """The struct formats above must agree with the compiler's layout."""
    io = [ffi.offsetof("struct kvm_run", "io", name) - _UNION
          for name in ("direction", "size", "port", "count", "data_offset")]
    mmio = [ffi.offsetof("struct kvm_run", "mmio", name) - _UNION
            for name in ("phys_addr", "data", "len", "is_write")]
    if io != [0, 1, 2, 4, 8] or mmio != [0, 8, 16, 20]:
        raise ImportError(f"unexpected struct kvm_run layout: io {io}, mmio {mmio}")


_check_layout()

EXIT_IO, EXIT_MMIO, EXIT_HLT = lib.KVM_EXIT_IO, lib.KVM_EXIT_MMIO, lib.KVM_EXIT_HLT
DEBUG_EXITS = (lib.KVM_EXIT_DEBUG, lib.KVM_EXIT_INTERNAL_ERROR)
IO_OUT = lib.KVM_EXIT_IO_OUT
EINTR, EAGAIN = 4, 11
RFLAGS_IF = 1 << 9
BYTES = [bytes((value,)) for value in range(256)]   # shared, immutable one-byte payloads
VALID_IO_SIZES = (1, 2, 4)

SYSTEM_EVENTS = {
    lib.KVM_SYSTEM_EVENT_SHUTDOWN: (STATUS_OK, "poweroff"),
    lib.KVM_SYSTEM_EVENT_RESET: (STATUS_OK, "reset"),
    lib.KVM_SYSTEM_EVENT_CRASH: (STATUS_CRASH, "guest-crash"),
}
INTERNAL_ERRORS = {
    lib.KVM_INTERNAL_ERROR_EMULATION: "instruction emulation failed",
    lib.KVM_INTERNAL_ERROR_SIMUL_EX: "exception while delivering an exception",
    lib.KVM_INTERNAL_ERROR_DELIVERY_EV: "event delivery failed",
    lib.KVM_INTERNAL_ERROR_UNEXPECTED_EXIT_REASON: "unexpected hardware exit reason",
}


class VcpuLoop:
    """Runs one vCPU until the VM-wide StopSignal is raised."""

    def __init__(self, vcpu, port_bus, mmio_bus, stop, stats, halt_is_final=lambda vcpu: True,
                 hooks=None):
        self.vcpu = vcpu
        self.hooks = hooks if hooks is not None else Hooks()
        self.port_bus = port_bus
        self.mmio_bus = mmio_bus
        self.stop = stop
        self.stats = stats
        # Whether a HLT exit can never be woken (no interrupt source can reach it).
        self.halt_is_final = halt_is_final
        # Dormancy probes (see request_probe): the round asked for, the
        # round last answered, and the answer.
        self.probe_round = 0
        self.answered_round = 0
        self.dormant = False
        # A debugger (pyvmm.gdb): debug_handler(loop, reason) gets KVM_EXIT_DEBUG
        # and emulation failures first, True when it handled the exit;
        # interrupt_handler(loop) runs after every kick. None: not debugging.
        self.debug_handler = None
        self.interrupt_handler = None

    def request_probe(self, round_number):
        """Asks the vCPU thread whether its vCPU is dormant: halted with
        interrupts off, or waiting for a SIPI. With the in-kernel LAPIC a
        halt never exits to us, so the supervisor kicks the thread out of
        KVM_RUN (immediate_exit + a signal) and the thread looks for itself."""
        self.probe_round = round_number
        self.vcpu.run.immediate_exit = 1

    def _answer_probe(self):
        round_number = self.probe_round
        vcpu = self.vcpu
        state = vcpu.get_mp_state()
        if state == lib.KVM_MP_STATE_HALTED:
            dormant = not vcpu.get_regs().rflags & RFLAGS_IF
        else:
            dormant = state in (lib.KVM_MP_STATE_UNINITIALIZED, lib.KVM_MP_STATE_INIT_RECEIVED)
        self.dormant = dormant
        self.answered_round = round_number

    def run(self):
        """The loop; returns when the VM stops. Device errors propagate.

        With hooks (or tracing) the observed loop decodes each exit into an
        ExitEvent; without, the plain loop below pays nothing for them."""
        if self.hooks:
            return self._run_observed()
        return self._run_plain()

    def _interrupted(self, ret):
        """KVM_RUN returned an error: a kick (answer a probe if one is asked) or a failure."""
        if ret != -EINTR and ret != -EAGAIN:
            raise KvmError("KVM_RUN", -ret, f"vCPU {self.vcpu.index}")
        self.stats.interrupted += 1
        self.vcpu.run.immediate_exit = 0
        if self.probe_round != self.answered_round:
            self._answer_probe()
        if self.interrupt_handler is not None:
            self.interrupt_handler(self)

    def _run_plain(self):
        vcpu, stop, stats = self.vcpu, self.stop, self.stats
        buf = vcpu.run_buffer
        run_size = vcpu.run_size
        enter = vcpu.enter
        port_read, port_write = self.port_bus.read, self.port_bus.write
        reasons, ports = stats.reasons, stats.ports
        unpack_exit, header = _EXIT_IO.unpack_from, _REASON_OFFSET
        while not stop.requested:
            ret = enter()
            if ret < 0:
                self._interrupted(ret)
                continue
            reason, direction, size, port, count, offset = unpack_exit(buf, header)
            if reason < 64:
                reasons[reason] += 1
            if reason == EXIT_IO:
                key = port << 1 | direction
                ports[key] = ports.get(key, 0) + count
                if count == 1 and size in VALID_IO_SIZES and offset + size <= run_size:
                    if direction == IO_OUT:
                        if size == 1:   # the common case: no slice, no copy
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

    # --- the observed loop: hooks and tracing ---------------------------------
    def _run_observed(self):
        vcpu, stop, stats = self.vcpu, self.stop, self.stats
        buf = vcpu.run_buffer
        vcpu.run.kvm_valid_regs = lib.KVM_SYNC_X86_REGS   # RIP with every exit, no extra ioctl
        seq = 0
        while not stop.requested:
            ret = vcpu.enter()
            if ret < 0:
                self._interrupted(ret)
                continue
            reason, direction, size, port, count, offset = _EXIT_IO.unpack_from(buf, _REASON_OFFSET)
            if reason < 64:
                stats.reasons[reason] += 1
            seq += 1
            event = ExitEvent(seq, vcpu.index, monotonic_ns(), exit_reason_name(reason),
                              _RIP.unpack_from(buf, _SYNC_RIP)[0])
            if reason == EXIT_IO:
                self._observe_io(event, direction, size, port, count, offset)
            elif reason == EXIT_MMIO:
                self._observe_mmio(event)
            else:
                _call_hooks(self.hooks.before, event)
                self._other(reason)
                _call_hooks(self.hooks.after, event)
            if event.stop_request is not None:
                status, message = event.stop_request
                stop.request(status, "hook", message, vcpu=vcpu.index)

    def _observe_io(self, event, direction, size, port, count, offset):
        key = port << 1 | direction
        self.stats.ports[key] = self.stats.ports.get(key, 0) + count
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
        buf = self.vcpu.run_buffer
        addr, data, length, is_write = _MMIO.unpack_from(buf, _UNION)
        key = addr << 1 | (1 if is_write else 0)
        self.stats.mmio[key] = self.stats.mmio.get(key, 0) + 1
        if not 1 <= length <= 8:
            self._crash("bad-mmio", f"malformed MMIO exit at {addr:#x} (length {length})")
            return
        event.address, event.size = addr, length
        event.direction = "write" if is_write else "read"
        if is_write:
            event.data = data[:length]
        self._perform(event, length, self.mmio_bus, addr)
        if not is_write:
            buf[_MMIO_DATA:_MMIO_DATA + length] = event.data

    def _perform(self, event, total, bus, addr):
        """Before hooks, the bus accesses (one per element), after hooks."""
        _call_hooks(self.hooks.before, event)
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
        buf = self.vcpu.run_buffer
        addr, data, length, is_write = _MMIO.unpack_from(buf, _UNION)
        mmio = self.stats.mmio
        key = addr << 1 | (1 if is_write else 0)
        mmio[key] = mmio.get(key, 0) + 1
        if not 1 <= length <= 8:
            self._crash("bad-mmio", f"malformed MMIO exit at {addr:#x} (length {length})")
            return
        if is_write:
            self.mmio_bus.write(addr, data[:length])
        else:
            buf[_MMIO_DATA:_MMIO_DATA + length] = self.mmio_bus.read(addr, length)

    def _other(self, reason):
        if self.debug_handler is not None and reason in DEBUG_EXITS and self.debug_handler(self, reason):
            return
        run = self.vcpu.run
        index = self.vcpu.index
        if reason == EXIT_HLT:
            if self.halt_is_final(self.vcpu):
                self.stop.request(STATUS_OK, "halt", vcpu=index)
        elif reason == lib.KVM_EXIT_SHUTDOWN:
            self._crash("triple-fault", "guest triple fault (shutdown)" + self._where())
        elif reason == lib.KVM_EXIT_FAIL_ENTRY:
            self._crash("fail-entry", "KVM could not enter the guest (hardware entry failure "
                        f"reason {run.fail_entry.hardware_entry_failure_reason:#x})")
        elif reason == lib.KVM_EXIT_INTERNAL_ERROR:
            suberror = run.internal.suberror
            what = INTERNAL_ERRORS.get(suberror, f"suberror {suberror}")
            self._crash("internal-error", f"KVM internal error: {what}" + self._where())
        elif reason == lib.KVM_EXIT_SYSTEM_EVENT:
            event = run.system_event.type
            status, tag = SYSTEM_EVENTS.get(event, (STATUS_CRASH, f"system-event-{event}"))
            if status == STATUS_OK:
                self.stop.request(status, tag, vcpu=index)
            elif event == lib.KVM_SYSTEM_EVENT_CRASH:
                self._crash(tag, "the guest reported a crash (system event)")
            else:
                self._crash(tag, f"unhandled system event {event}")
        elif reason in (lib.KVM_EXIT_IRQ_WINDOW_OPEN, lib.KVM_EXIT_INTR):
            pass
        elif reason in (lib.KVM_EXIT_X86_RDMSR, lib.KVM_EXIT_X86_WRMSR):
            run.msr.error = 1  # inject #GP, as for an MSR the CPU does not have
        else:
            self._crash("unhandled-exit", f"unhandled exit reason {reason} "
                        f"({exit_reason_name(reason)})" + self._where())

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
