"""A hardware-virtualisation test host: nested SVM under QEMU/TCG.

    from pyvmm.testing.svm import SvmHost
    with SvmHost() as host:
        host.run([sys.executable, "-m", "pyvmm", "run"]).status

assets.py fetches and caches the L1 kernel and initramfs, host_init.py is
the L1 /init and its job protocol, host.py boots L1 and runs commands in it,
linux_guest.py runs a shell script in a Linux guest that pyvmm boots there.
"""

from .assets import HostAssets, fetch
from .host import CommandResult, HostSlot, SvmHost, SvmHostError, missing
from .linux_guest import LinuxRun, run_linux_script

__all__ = ["CommandResult", "HostAssets", "HostSlot", "LinuxRun", "SvmHost", "SvmHostError", "fetch",
           "missing", "run_linux_script"]
