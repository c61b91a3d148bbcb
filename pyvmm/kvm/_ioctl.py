"""Issuing ioctls by name through the cffi helpers."""

from .._kvm import ffi, lib
from .errors import check


def ioctl(fd, name, arg=ffi.NULL, detail=""):
    """ioctl(fd, KVM_<name>, pointer) -> result; raises KvmError naming the call."""
    return check(name, lib.pyvmm_ioctl(fd, getattr(lib, name), arg), detail)


def ioctl_value(fd, name, value=0, detail=""):
    """ioctl(fd, KVM_<name>, integer) -> result; raises KvmError naming the call."""
    return check(name, lib.pyvmm_ioctl_value(fd, getattr(lib, name), value), detail)
