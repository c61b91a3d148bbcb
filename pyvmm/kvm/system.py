"""Kvm: the /dev/kvm system handle."""

import errno
import os

from .._kvm import ffi, lib
from ._ioctl import FdObject, cpuid_entries, ioctl, ioctl_value
from .errors import KvmError
from .vm import Vm

API_VERSION = 12
# Large enough for every CPUID leaf KVM reports (KVM itself caps at 256).
MAX_CPUID_ENTRIES = 256
CAPABILITY_NAMES = sorted(name for name in dir(lib) if name.startswith("KVM_CAP_"))


class Kvm(FdObject):
    """An open /dev/kvm. Creates VMs and answers capability queries."""

    def __init__(self, path="/dev/kvm"):
        try:
            self.fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        except OSError as error:
            raise KvmError(f"open {path}", error.errno or errno.ENODEV) from None
        try:
            version = ioctl_value(self.fd, "KVM_GET_API_VERSION")
            if version != API_VERSION:
                raise KvmError("KVM_GET_API_VERSION", errno.EINVAL,
                               f"API version {version}, pyvmm needs {API_VERSION}")
            self.vcpu_mmap_size = ioctl_value(self.fd, "KVM_GET_VCPU_MMAP_SIZE")
        except BaseException:
            os.close(self.fd)
            raise

    def check_extension(self, capability):
        """KVM_CHECK_EXTENSION: 0 when absent, else a capability-specific value."""
        if isinstance(capability, str):
            capability = getattr(lib, capability)
        return ioctl_value(self.fd, "KVM_CHECK_EXTENSION", capability)

    def capabilities(self):
        """{"KVM_CAP_...": value} for every capability pyvmm knows by name."""
        return {name: self.check_extension(getattr(lib, name)) for name in CAPABILITY_NAMES}

    def supported_cpuid(self):
        """KVM_GET_SUPPORTED_CPUID as a list of dicts (function, index, flags, eax..edx)."""
        cpuid = ffi.new("struct kvm_cpuid2 *", {"nent": MAX_CPUID_ENTRIES, "entries": MAX_CPUID_ENTRIES})
        ioctl(self.fd, "KVM_GET_SUPPORTED_CPUID", cpuid)
        return cpuid_entries(cpuid)

    def msr_index_list(self, max_msrs=4096):
        """KVM_GET_MSR_INDEX_LIST: the MSRs KVM saves and restores for a vCPU."""
        msrs = ffi.new("struct kvm_msr_list *", {"nmsrs": max_msrs, "indices": max_msrs})
        ioctl(self.fd, "KVM_GET_MSR_INDEX_LIST", msrs)
        return [msrs.indices[i] for i in range(msrs.nmsrs)]

    def msr_feature_index_list(self, max_msrs=1024):
        """KVM_GET_MSR_FEATURE_INDEX_LIST: the feature MSRs (ARCH_CAPABILITIES,
        microcode revision...) a VMM may set on a vCPU; empty without the capability."""
        if not self.check_extension(lib.KVM_CAP_GET_MSR_FEATURES):
            return []
        msrs = ffi.new("struct kvm_msr_list *", {"nmsrs": max_msrs, "indices": max_msrs})
        ioctl(self.fd, "KVM_GET_MSR_FEATURE_INDEX_LIST", msrs)
        return [msrs.indices[i] for i in range(msrs.nmsrs)]

    def create_vm(self):
        return Vm(self, ioctl_value(self.fd, "KVM_CREATE_VM", 0))
