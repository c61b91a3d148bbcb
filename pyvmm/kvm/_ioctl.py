"""Issuing ioctls by name through the cffi helpers; what the fd objects share."""

import os

from .._kvm import ffi, lib
from .errors import check


def ioctl(fd, name, arg=ffi.NULL, detail=""):
    """ioctl(fd, KVM_<name>, pointer) -> result; raises KvmError naming the call."""
    return check(name, lib.pyvmm_ioctl(fd, getattr(lib, name), arg), detail)


def ioctl_value(fd, name, value=0, detail=""):
    """ioctl(fd, KVM_<name>, integer) -> result; raises KvmError naming the call."""
    return check(name, lib.pyvmm_ioctl_value(fd, getattr(lib, name), value), detail)


CPUID_FIELDS = ("function", "index", "flags", "eax", "ebx", "ecx", "edx")


def cpuid_entries(cpuid):
    """A struct kvm_cpuid2 as a list of dicts keyed by CPUID_FIELDS."""
    return [{key: getattr(cpuid.entries[i], key) for key in CPUID_FIELDS} for i in range(cpuid.nent)]


class FdObject:
    """Owns one KVM file descriptor: close() is idempotent, `with` closes."""

    fd = -1

    def _release(self):
        """Frees what the subclass holds besides its fd (called once, before it)."""

    def close(self):
        """Idempotent; the fd is closed even if _release fails."""
        if self.fd >= 0:
            try:
                self._release()
            finally:
                os.close(self.fd)
                self.fd = -1

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
