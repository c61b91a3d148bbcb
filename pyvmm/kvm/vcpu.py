"""Vcpu: one virtual CPU, its registers and its shared `struct kvm_run`."""

import functools
import mmap
from errno import EAGAIN, EINTR

from .._kvm import ffi, lib
from ._ioctl import FdObject, cpuid_entries, ioctl, ioctl_value
from .errors import KvmError
from .exits import INTERRUPTED, ExitReader, SyncedRip

MP_STATE_NAMES = {getattr(lib, name): name[len("KVM_MP_STATE_"):].lower()
                  for name in dir(lib) if name.startswith("KVM_MP_STATE_")}
LAPIC_SIZE = 1024
# The validity flag KVM_SET_VCPU_EVENTS takes and KVM_GET_VCPU_EVENTS never reports.
SET_ONLY_EVENT_FLAGS = lib.KVM_VCPUEVENT_VALID_SIPI_VECTOR
SYNC_ALL = lib.KVM_SYNC_X86_REGS | lib.KVM_SYNC_X86_SREGS | lib.KVM_SYNC_X86_EVENTS
_SYNC_OFFSETS = (lib.pyvmm_sync_regs_offset(), lib.pyvmm_sync_sregs_offset(), lib.pyvmm_sync_events_offset())
XSAVE_LEGACY_SIZE = 4096          # struct kvm_xsave without KVM_CAP_XSAVE2


class Vcpu(FdObject):
    """A vCPU fd plus its mmap'd kvm_run.

    run() enters the guest and returns the decoded exit (pyvmm.kvm.exits).
    The hot loop instead calls enter() (KVM_RUN: 0 or -errno, nothing else)
    and reads the exit through `exits` (an ExitReader); port-I/O data lives
    in `run_buffer` (a memoryview of the whole mapping) at the exit's
    data_offset. `run_pointer` is the mapping for the C helpers.
    """

    def __init__(self, vm, fd, index, mmap_size):
        self.vm = vm
        self.fd = fd
        self.index = index
        self._map = mmap.mmap(fd, mmap_size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        self.run_buffer = memoryview(self._map)
        self._run = ffi.from_buffer("struct kvm_run *", self._map)
        self.run_size = mmap_size
        self.exits = ExitReader(self._run, self.run_buffer)
        # KVM_RUN as one call: returns 0, or -errno (-EINTR after a kick).
        self.enter = functools.partial(lib.pyvmm_ioctl_value, fd, lib.KVM_RUN, 0)

    @property
    def run_pointer(self):
        """The kvm_run mapping as a `struct kvm_run *`, for C code that loops on KVM_RUN."""
        return self._run

    # --- running -----------------------------------------------------------
    def run(self):
        """KVM_RUN until the next exit: the decoded exit, or INTERRUPTED after a kick."""
        ret = self.enter()
        if ret < 0:
            if ret in (-EINTR, -EAGAIN):
                return INTERRUPTED
            raise KvmError("KVM_RUN", -ret, f"vCPU {self.index}")
        return self.exits.decode()

    @property
    def apic_base(self):
        """The APIC base MSR as of the last exit (kvm_run's copy, no ioctl)."""
        return self._run.apic_base

    def set_immediate_exit(self, flag=True):
        """With the flag set, the next KVM_RUN returns -EINTR at once (a kick that cannot be lost)."""
        self._run.immediate_exit = 1 if flag else 0

    def synced_rip(self):
        """Turns on KVM_CAP_SYNC_REGS; returns a SyncedRip whose read() is RIP at the last exit."""
        return SyncedRip(self._run, self.run_buffer)

    def stage(self, regs, sregs, events):
        """Puts registers, special registers and events (cdata structs) in the
        kvm_run page for KVM to take when the vCPU next enters
        (KVM_CAP_SYNC_REGS), instead of three ioctls; they are taken in that
        order, after anything set by ioctl meanwhile. The getters below
        answer with staged values until then. False if KVM cannot."""
        if self.vm.kvm.check_extension(lib.KVM_CAP_SYNC_REGS) & SYNC_ALL != SYNC_ALL:
            return False
        run = ffi.cast("char *", self._run)
        for offset, value in ((_SYNC_OFFSETS[0], regs), (_SYNC_OFFSETS[1], sregs), (_SYNC_OFFSETS[2], events)):
            ffi.memmove(run + offset, value, ffi.sizeof(value[0]))
        self._run.kvm_dirty_regs = SYNC_ALL
        return True

    def _staged(self, bit, index, ctype):
        """A staged value KVM has not taken yet, or None."""
        if not self._run.kvm_dirty_regs & bit:
            return None
        value = ffi.new(ctype)
        ffi.memmove(value, ffi.cast("char *", self._run) + _SYNC_OFFSETS[index], ffi.sizeof(value[0]))
        return value

    # --- registers ---------------------------------------------------------
    def _get(self, name, ctype):
        value = ffi.new(ctype)
        ioctl(self.fd, name, value)
        return value

    def get_regs(self):
        return self._staged(lib.KVM_SYNC_X86_REGS, 0, "struct kvm_regs *") or \
            self._get("KVM_GET_REGS", "struct kvm_regs *")

    def set_regs(self, regs):
        self._run.kvm_dirty_regs &= ~lib.KVM_SYNC_X86_REGS
        ioctl(self.fd, "KVM_SET_REGS", regs)

    def get_sregs(self):
        return self._staged(lib.KVM_SYNC_X86_SREGS, 1, "struct kvm_sregs *") or \
            self._get("KVM_GET_SREGS", "struct kvm_sregs *")

    def set_sregs(self, sregs):
        self._run.kvm_dirty_regs &= ~lib.KVM_SYNC_X86_SREGS
        ioctl(self.fd, "KVM_SET_SREGS", sregs)

    def get_fpu(self):
        return self._get("KVM_GET_FPU", "struct kvm_fpu *")

    def set_fpu(self, fpu):
        ioctl(self.fd, "KVM_SET_FPU", fpu)

    def get_lapic(self):
        """The local APIC's 1 KiB register page (KVM_GET_LAPIC), as a bytearray."""
        return bytearray(ffi.buffer(self._get("KVM_GET_LAPIC", "struct kvm_lapic_state *")))

    def set_lapic(self, registers):
        lapic = ffi.new("struct kvm_lapic_state *")
        ffi.buffer(lapic)[:] = bytes(registers)
        ioctl(self.fd, "KVM_SET_LAPIC", lapic)

    def set_guest_debug(self, enable=True, software_breakpoints=False, single_step=False, debugreg=None):
        """KVM_SET_GUEST_DEBUG. `debugreg`: the eight DR0-DR7 values, which turn
        on hardware breakpoints; enable=False gives the guest its debug state back."""
        debug = ffi.new("struct kvm_guest_debug *")
        control = lib.KVM_GUESTDBG_ENABLE if enable else 0
        if enable and software_breakpoints:
            control |= lib.KVM_GUESTDBG_USE_SW_BP
        if enable and single_step:
            control |= lib.KVM_GUESTDBG_SINGLESTEP
        if enable and debugreg is not None:
            control |= lib.KVM_GUESTDBG_USE_HW_BP
            for index, value in enumerate(debugreg):
                debug.arch.debugreg[index] = value
        debug.control = control
        ioctl(self.fd, "KVM_SET_GUEST_DEBUG", debug)

    def translate(self, linear_address):
        """KVM_TRANSLATE: (physical address, valid, writeable) through the guest's page tables."""
        translation = ffi.new("struct kvm_translation *", {"linear_address": linear_address})
        ioctl(self.fd, "KVM_TRANSLATE", translation)
        return translation.physical_address, bool(translation.valid), bool(translation.writeable)

    def get_mp_state(self, raw=False):
        """"runnable", "halted", "uninitialized", "init_received", "sipi_received", ...
        (KVM's number with raw=True)."""
        state = self._get("KVM_GET_MP_STATE", "struct kvm_mp_state *").mp_state
        return state if raw else MP_STATE_NAMES.get(state, f"unknown_{state}")


    def get_xcrs(self):
        """{xcr: value} (KVM_GET_XCRS)."""
        xcrs = self._get("KVM_GET_XCRS", "struct kvm_xcrs *")
        return {xcrs.xcrs[i].xcr: xcrs.xcrs[i].value for i in range(min(xcrs.nr_xcrs, 16))}

    def set_mp_state(self, state):
        """KVM_SET_MP_STATE, from KVM's number or a name get_mp_state() returns
        ("runnable", "uninitialized", ...)."""
        if isinstance(state, str):
            value = {name: number for number, name in MP_STATE_NAMES.items()}.get(state)
            if value is None:
                raise ValueError(f"unknown MP state {state!r}")
            state = value
        ioctl(self.fd, "KVM_SET_MP_STATE", ffi.new("struct kvm_mp_state *", {"mp_state": state}))

    def set_xcrs(self, values):
        xcrs = ffi.new("struct kvm_xcrs *")
        xcrs.nr_xcrs = len(values)
        for i, (xcr, value) in enumerate(sorted(values.items())):
            xcrs.xcrs[i].xcr = xcr
            xcrs.xcrs[i].value = value
        ioctl(self.fd, "KVM_SET_XCRS", xcrs)

    def get_xsave(self):
        """The XSAVE area (KVM_GET_XSAVE2 when KVM offers it, else KVM_GET_XSAVE) as bytes."""
        size = self.vm.xsave_size
        area = ffi.new("char[]", size)
        ioctl(self.fd, "KVM_GET_XSAVE2" if size > XSAVE_LEGACY_SIZE else "KVM_GET_XSAVE",
              ffi.cast("struct kvm_xsave *", area))
        return bytes(ffi.buffer(area))

    def set_xsave(self, area):
        if len(area) != self.vm.xsave_size:
            raise ValueError(f"XSAVE area of {len(area)} bytes, KVM's is {self.vm.xsave_size}")
        buffer = ffi.new("char[]", bytes(area))
        ioctl(self.fd, "KVM_SET_XSAVE", ffi.cast("struct kvm_xsave *", buffer))

    def get_vcpu_events(self):
        """Pending and injected exceptions, interrupts, NMIs, SMIs (KVM_GET_VCPU_EVENTS)."""
        staged = self._staged(lib.KVM_SYNC_X86_EVENTS, 2, "struct kvm_vcpu_events *")
        if staged:
            staged.flags &= ~SET_ONLY_EVENT_FLAGS          # as KVM_GET_VCPU_EVENTS reports them
            return staged
        return self._get("KVM_GET_VCPU_EVENTS", "struct kvm_vcpu_events *")

    def set_vcpu_events(self, events):
        self._run.kvm_dirty_regs &= ~lib.KVM_SYNC_X86_EVENTS
        ioctl(self.fd, "KVM_SET_VCPU_EVENTS", events)

    def clear_vcpu_events(self):
        """No exception, interrupt or NMI pending or injected, NMIs unmasked, no
        interrupt shadow and SIPI vector 0 (as after a reset)."""
        events = ffi.new("struct kvm_vcpu_events *")
        events.flags = (lib.KVM_VCPUEVENT_VALID_NMI_PENDING | lib.KVM_VCPUEVENT_VALID_SHADOW
                        | lib.KVM_VCPUEVENT_VALID_SIPI_VECTOR)
        self.set_vcpu_events(events)

    def get_debugregs(self):
        """struct kvm_debugregs: db[0..3] (DR0-DR3), dr6, dr7 (KVM_GET_DEBUGREGS)."""
        return self._get("KVM_GET_DEBUGREGS", "struct kvm_debugregs *")

    def set_debugregs(self, debugregs):
        ioctl(self.fd, "KVM_SET_DEBUGREGS", debugregs)

    def get_tsc_khz(self):
        """The guest TSC's frequency in kHz (KVM_GET_TSC_KHZ)."""
        return ioctl_value(self.fd, "KVM_GET_TSC_KHZ")

    def readable_msrs(self, indices):
        """The indices of `indices` that KVM_GET_MSRS reads on this vCPU, in order."""
        indices, readable = list(indices), []
        while indices:
            msrs = ffi.new("struct kvm_msrs *", {"nmsrs": len(indices), "entries": len(indices)})
            for i, index in enumerate(indices):
                msrs.entries[i].index = index
            done = ioctl(self.fd, "KVM_GET_MSRS", msrs)
            readable += indices[:done]
            indices = indices[done + 1:]            # the one refused is left out
        return readable

    def get_msrs(self, indices):
        """{index: value} for the MSRs KVM can read; raises if one is refused."""
        indices = list(indices)
        msrs = ffi.new("struct kvm_msrs *", {"nmsrs": len(indices), "entries": len(indices)})
        for i, index in enumerate(indices):
            msrs.entries[i].index = index
        done = ioctl(self.fd, "KVM_GET_MSRS", msrs)
        if done != len(indices):
            raise KvmError("KVM_GET_MSRS", 22, f"MSR {indices[done]:#x} refused")
        return {msrs.entries[i].index: msrs.entries[i].data for i in range(done)}

    def set_msrs(self, values):
        items = sorted(values.items())
        msrs = ffi.new("struct kvm_msrs *", {"nmsrs": len(items), "entries": len(items)})
        for i, (index, value) in enumerate(items):
            msrs.entries[i].index = index
            msrs.entries[i].data = value
        done = ioctl(self.fd, "KVM_SET_MSRS", msrs)
        if done != len(items):
            raise KvmError("KVM_SET_MSRS", 22, f"MSR {items[done][0]:#x} refused")

    def set_cpuid(self, entries):
        """KVM_SET_CPUID2 from dicts shaped like Kvm.supported_cpuid()'s."""
        cpuid = ffi.new("struct kvm_cpuid2 *", {"nent": len(entries), "entries": len(entries)})
        for i, entry in enumerate(entries):
            for key, value in entry.items():
                setattr(cpuid.entries[i], key, value)
        ioctl(self.fd, "KVM_SET_CPUID2", cpuid)

    def get_cpuid(self, max_entries=256):
        cpuid = ffi.new("struct kvm_cpuid2 *", {"nent": max_entries, "entries": max_entries})
        ioctl(self.fd, "KVM_GET_CPUID2", cpuid)
        return cpuid_entries(cpuid)

    def _release(self):
        self.exits = None
        self.run_buffer.release()
        ffi.release(self._run)
        self._map.close()
