"""VM exits decoded from the shared kvm_run page, in the spirit of kvm-ioctls' VcpuExit.

`Vcpu.run()` enters the guest and returns one decoded exit (or INTERRUPTED
after a kick). The classes below carry what each reason means:

    IoExit(port, size, count, is_out, data_offset)   port I/O; the data
        (size * count bytes) lives in the vCPU's run_buffer at data_offset:
        read there for an OUT, written there for an IN
    MmioExit(address, length, is_write, data)        MMIO; answer a read
        with ExitReader.set_mmio_data
    HaltExit, ShutdownExit (a triple fault), FailEntryExit(hardware_reason),
    InternalErrorExit(suberror), SystemEventExit(event: "shutdown",
    "reset", "crash" or a number), DebugExit(exception, pc, dr6, dr7),
    MsrExit(index, is_write) (refuse it with ExitReader.fail_msr),
    OtherExit (IRQ window, a host interrupt, a reason pyvmm does not know).

Every exit has `reason` (KVM's number) and `name` (e.g. "io", "mmio").

The hot path (the run loop) reads a port-I/O exit without building an
object: ExitReader.header() is one struct unpack of the reason and the io
fields, at offsets the compiler reported; the other decoders run only for
the exits that need them.
"""

import struct

from .._kvm import ffi, lib

EXIT_IO, EXIT_MMIO, EXIT_HLT = lib.KVM_EXIT_IO, lib.KVM_EXIT_MMIO, lib.KVM_EXIT_HLT
EXIT_DEBUG, EXIT_INTERNAL_ERROR = lib.KVM_EXIT_DEBUG, lib.KVM_EXIT_INTERNAL_ERROR
IO_IN, IO_OUT = lib.KVM_EXIT_IO_IN, lib.KVM_EXIT_IO_OUT
REASON_COUNT = 64            # reasons counted one by one (ExitStats, the C loop)

EXIT_REASON_NAMES = {getattr(lib, name): name[len("KVM_EXIT_"):].lower()
                     for name in dir(lib)
                     if name.startswith("KVM_EXIT_") and not name.startswith("KVM_EXIT_IO_")}


def exit_reason_name(reason):
    return EXIT_REASON_NAMES.get(reason, f"unknown_{reason}")


_UNION = ffi.offsetof("struct kvm_run", "io")
_REASON_OFFSET = ffi.offsetof("struct kvm_run", "exit_reason")
# exit_reason, then the io member of the union: direction, size, port, count,
# data_offset (meaningless for other reasons, and cheaper than a branch).
_HEADER = struct.Struct(f"<I{_UNION - _REASON_OFFSET - 4}xBBHIQ")
_MMIO = struct.Struct("<Q8sIB")          # phys_addr, data, len, is_write
_MMIO_DATA = _UNION + 8
_RIP = struct.Struct("<Q")


def _check_layout():
    """The struct formats above must agree with the compiler's layout."""
    io = [ffi.offsetof("struct kvm_run", "io", name) - _UNION
          for name in ("direction", "size", "port", "count", "data_offset")]
    mmio = [ffi.offsetof("struct kvm_run", "mmio", name) - _UNION
            for name in ("phys_addr", "data", "len", "is_write")]
    if io != [0, 1, 2, 4, 8] or mmio != [0, 8, 16, 20]:
        raise ImportError(f"unexpected struct kvm_run layout: io {io}, mmio {mmio}")


_check_layout()

SYSTEM_EVENT_NAMES = {
    lib.KVM_SYSTEM_EVENT_SHUTDOWN: "shutdown",
    lib.KVM_SYSTEM_EVENT_RESET: "reset",
    lib.KVM_SYSTEM_EVENT_CRASH: "crash",
}
INTERNAL_ERRORS = {
    lib.KVM_INTERNAL_ERROR_EMULATION: "instruction emulation failed",
    lib.KVM_INTERNAL_ERROR_SIMUL_EX: "exception while delivering an exception",
    lib.KVM_INTERNAL_ERROR_DELIVERY_EV: "event delivery failed",
    lib.KVM_INTERNAL_ERROR_UNEXPECTED_EXIT_REASON: "unexpected hardware exit reason",
}


class VcpuExit:
    __slots__ = ("reason",)

    def __init__(self, reason):
        self.reason = reason

    @property
    def name(self):
        return exit_reason_name(self.reason)

    def __repr__(self):
        fields = ", ".join(f"{slot}={getattr(self, slot)!r}" for cls in type(self).__mro__
                           for slot in getattr(cls, "__slots__", ()) if slot != "reason")
        return f"{type(self).__name__}({fields})"


class IoExit(VcpuExit):
    __slots__ = ("port", "size", "count", "is_out", "data_offset")

    def __init__(self, port, size, count, is_out, data_offset):
        super().__init__(EXIT_IO)
        self.port, self.size, self.count, self.is_out, self.data_offset = port, size, count, is_out, data_offset


class MmioExit(VcpuExit):
    __slots__ = ("address", "length", "is_write", "data")

    def __init__(self, address, length, is_write, data):
        super().__init__(EXIT_MMIO)
        self.address, self.length, self.is_write, self.data = address, length, is_write, data


class HaltExit(VcpuExit):
    __slots__ = ()


class ShutdownExit(VcpuExit):
    """A triple fault (or another reason the CPU shut down)."""
    __slots__ = ()


class FailEntryExit(VcpuExit):
    __slots__ = ("hardware_reason",)

    def __init__(self, reason, hardware_reason):
        super().__init__(reason)
        self.hardware_reason = hardware_reason


class InternalErrorExit(VcpuExit):
    __slots__ = ("suberror",)

    def __init__(self, reason, suberror):
        super().__init__(reason)
        self.suberror = suberror

    @property
    def is_emulation_failure(self):
        return self.suberror == lib.KVM_INTERNAL_ERROR_EMULATION

    @property
    def description(self):
        return INTERNAL_ERRORS.get(self.suberror, f"suberror {self.suberror}")


class SystemEventExit(VcpuExit):
    __slots__ = ("event",)

    def __init__(self, reason, event_type):
        super().__init__(reason)
        self.event = SYSTEM_EVENT_NAMES.get(event_type, event_type)


class DebugExit(VcpuExit):
    __slots__ = ("exception", "pc", "dr6", "dr7")

    def __init__(self, reason, exception, pc, dr6, dr7):
        super().__init__(reason)
        self.exception, self.pc, self.dr6, self.dr7 = exception, pc, dr6, dr7


class MsrExit(VcpuExit):
    __slots__ = ("index", "is_write")

    def __init__(self, reason, index):
        super().__init__(reason)
        self.index, self.is_write = index, reason == lib.KVM_EXIT_X86_WRMSR


class OtherExit(VcpuExit):
    """An IRQ window, a host interrupt, or a reason pyvmm does not handle."""
    __slots__ = ()

    @property
    def is_benign(self):
        """Nothing to do but enter the guest again."""
        return self.reason in (lib.KVM_EXIT_IRQ_WINDOW_OPEN, lib.KVM_EXIT_INTR)


class Interrupted:
    """KVM_RUN returned EINTR or EAGAIN: a kick from another thread."""

    reason = -1
    name = "interrupted"

    def __repr__(self):
        return "INTERRUPTED"


INTERRUPTED = Interrupted()


class ExitReader:
    """Reads (and answers) the exit one vCPU's kvm_run page holds."""

    def __init__(self, run, buffer):
        self._run = run            # the typed cffi view, for the rare reasons
        self._buffer = buffer      # a memoryview of the whole mapping
        self.header = lambda: _HEADER.unpack_from(buffer, _REASON_OFFSET)
        self.header.__doc__ = "(reason, direction, size, port, count, data_offset): one unpack."

    def mmio(self):
        """(address, data: 8 bytes, length, is_write) of an MMIO exit."""
        return _MMIO.unpack_from(self._buffer, _UNION)

    def set_mmio_data(self, data):
        """The answer to an MMIO read (len(data) bytes, at most 8)."""
        self._buffer[_MMIO_DATA:_MMIO_DATA + len(data)] = data

    def fail_msr(self):
        """Refuse the MSR access: the guest gets #GP, as for an MSR the CPU lacks."""
        self._run.msr.error = 1

    def decode(self):
        """The exit as a VcpuExit subclass (see the module docstring)."""
        run = self._run
        reason = run.exit_reason
        if reason == EXIT_IO:
            _, direction, size, port, count, offset = self.header()
            return IoExit(port, size, count, direction == IO_OUT, offset)
        if reason == EXIT_MMIO:
            address, data, length, is_write = self.mmio()
            return MmioExit(address, length, bool(is_write), data[:length] if is_write else b"")
        if reason == EXIT_HLT:
            return HaltExit(reason)
        if reason == lib.KVM_EXIT_SHUTDOWN:
            return ShutdownExit(reason)
        if reason == lib.KVM_EXIT_FAIL_ENTRY:
            return FailEntryExit(reason, run.fail_entry.hardware_entry_failure_reason)
        if reason == EXIT_INTERNAL_ERROR:
            return InternalErrorExit(reason, run.internal.suberror)
        if reason == lib.KVM_EXIT_SYSTEM_EVENT:
            return SystemEventExit(reason, run.system_event.type)
        if reason == EXIT_DEBUG:
            arch = run.debug.arch
            return DebugExit(reason, arch.exception, arch.pc, arch.dr6, arch.dr7)
        if reason in (lib.KVM_EXIT_X86_RDMSR, lib.KVM_EXIT_X86_WRMSR):
            return MsrExit(reason, run.msr.index)
        return OtherExit(reason)


class SyncedRip:
    """The guest's RIP at each exit without an ioctl (KVM_CAP_SYNC_REGS)."""

    _OFFSET = None

    def __init__(self, run, buffer):
        if SyncedRip._OFFSET is None:
            SyncedRip._OFFSET = lib.pyvmm_sync_regs_offset() + ffi.offsetof("struct kvm_regs", "rip")
        run.kvm_valid_regs = lib.KVM_SYNC_X86_REGS
        offset = SyncedRip._OFFSET
        self.read = lambda: _RIP.unpack_from(buffer, offset)[0]
