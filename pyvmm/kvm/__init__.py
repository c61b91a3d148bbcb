"""The KVM ioctl layer: Kvm (system), Vm, Vcpu. Knows nothing of devices."""

from .errors import KvmError
from .system import Kvm
from .vcpu import Vcpu, exit_reason_name
from .vm import Vm

__all__ = ["Kvm", "Vm", "Vcpu", "KvmError", "exit_reason_name"]
