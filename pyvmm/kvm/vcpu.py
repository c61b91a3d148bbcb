"""Vcpu: one virtual CPU, its registers and its shared `struct kvm_run`."""

import errno
import functools
import mmap

from .._kvm import ffi, lib
from ._ioctl import FdObject, cpuid_entries, ioctl
from .errors import KvmError

EXIT_REASON_NAMES = {getattr(lib, name): name[len("KVM_EXIT_"):].lower()
                     for name in dir(lib)
                     if name.startswith("KVM_EXIT_") and not name.startswith("KVM_EXIT_IO_")}


def exit_reason_name(reason):
    return EXIT_REASON_NAMES.get(reason, f"unknown_{reason}")


class Vcpu(FdObject):
    """A vCPU fd plus its mmap'd kvm_run.

    `run` is a typed cffi view of `struct kvm_run`; `run_buffer` is a
    memoryview of the whole shared page(s), where port-I/O data lives at
    `run.io.data_offset`.
    """

    def __init__(self, vm, fd, index, mmap_size):
        self.vm = vm
        self.fd = fd
        self.index = index
        self._map = mmap.mmap(fd, mmap_size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        self.run_buffer = memoryview(self._map)
        self.run = ffi.from_buffer("struct kvm_run *", self._map)
        self.run_size = mmap_size
        # KVM_RUN as one call: returns 0, or -errno (-EINTR after a kick).
        self.enter = functools.partial(lib.pyvmm_ioctl_value, fd, lib.KVM_RUN, 0)

    # --- running -----------------------------------------------------------
    def run_once(self):
        """KVM_RUN until the next exit. Returns 0, or -EINTR when interrupted."""
        ret = self.enter()
        if ret < 0 and ret != -errno.EINTR:  # EINTR: a kick from another thread
            raise KvmError("KVM_RUN", -ret, f"vCPU {self.index}")
        return ret

    # --- registers ---------------------------------------------------------
    def _get(self, name, ctype):
        value = ffi.new(ctype)
        ioctl(self.fd, name, value)
        return value

    def get_regs(self):
        return self._get("KVM_GET_REGS", "struct kvm_regs *")

    def set_regs(self, regs):
        ioctl(self.fd, "KVM_SET_REGS", regs)

    def get_sregs(self):
        return self._get("KVM_GET_SREGS", "struct kvm_sregs *")

    def set_sregs(self, sregs):
        ioctl(self.fd, "KVM_SET_SREGS", sregs)

    def get_fpu(self):
        return self._get("KVM_GET_FPU", "struct kvm_fpu *")

    def set_fpu(self, fpu):
        ioctl(self.fd, "KVM_SET_FPU", fpu)

    def get_lapic(self):
        return self._get("KVM_GET_LAPIC", "struct kvm_lapic_state *")

    def set_lapic(self, lapic):
        ioctl(self.fd, "KVM_SET_LAPIC", lapic)

    def set_guest_debug(self, control, debugreg=None):
        """KVM_SET_GUEST_DEBUG: `control` is KVM_GUESTDBG_* flags; `debugreg`
        the eight DR0-DR7 values for hardware breakpoints."""
        debug = ffi.new("struct kvm_guest_debug *")
        debug.control = control
        for index, value in enumerate(debugreg or ()):
            debug.arch.debugreg[index] = value
        ioctl(self.fd, "KVM_SET_GUEST_DEBUG", debug)

    def translate(self, linear_address):
        """KVM_TRANSLATE: (physical address, valid, writeable) through the guest's page tables."""
        translation = ffi.new("struct kvm_translation *", {"linear_address": linear_address})
        ioctl(self.fd, "KVM_TRANSLATE", translation)
        return translation.physical_address, bool(translation.valid), bool(translation.writeable)

    def get_mp_state(self):
        return self._get("KVM_GET_MP_STATE", "struct kvm_mp_state *").mp_state

    def set_mp_state(self, state):
        ioctl(self.fd, "KVM_SET_MP_STATE", ffi.new("struct kvm_mp_state *", {"mp_state": state}))

    def get_xcrs(self):
        xcrs = self._get("KVM_GET_XCRS", "struct kvm_xcrs *")
        return {xcrs.xcrs[i].xcr: xcrs.xcrs[i].value for i in range(xcrs.nr_xcrs)}

    def set_xcrs(self, values):
        xcrs = ffi.new("struct kvm_xcrs *")
        xcrs.nr_xcrs = len(values)
        for i, (xcr, value) in enumerate(sorted(values.items())):
            xcrs.xcrs[i].xcr = xcr
            xcrs.xcrs[i].value = value
        ioctl(self.fd, "KVM_SET_XCRS", xcrs)

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
        self.run_buffer.release()
        ffi.release(self.run)
        self._map.close()
