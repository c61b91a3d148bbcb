"""The KVM ioctl layer: Kvm (system), Vm, Vcpu and their decoded exits.

The only package that touches the generated cffi module (pyvmm._kvm),
besides the C helpers' own wrappers in pyvmm.run.fast and
pyvmm.run.deferred. Knows nothing of devices.
"""

from .._kvm import lib
from .errors import KvmError
from .exits import exit_reason_name
from .system import Kvm
from .vcpu import Vcpu
from .vm import Vm

__all__ = ["Kvm", "Vm", "Vcpu", "KvmError", "exit_reason_name", "install_kick_handler", "one_malloc_arena"]


def install_kick_handler(signo):
    """A do-nothing handler (without SA_RESTART) for `signo`: sent to a vCPU
    thread, it makes that thread's KVM_RUN return EINTR."""
    ret = lib.pyvmm_install_kick_handler(signo)
    if ret < 0:
        raise KvmError("sigaction", -ret, "the vCPU kick signal handler")



def one_malloc_arena():
    """Has every thread of the process allocate from one malloc arena
    (glibc). By default each new thread may get an arena of its own, which
    keeps the pages of what it freed: a VM's vCPU and device threads end with
    it, and one VM after another grew the process by about 17 KiB a VM
    (bench/soak), where one arena stays flat. pyvmm's threads allocate under
    the GIL, so they never contend for it."""
    lib.pyvmm_one_malloc_arena()
