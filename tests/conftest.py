"""Test-wide markers: `kvm` tests need /dev/kvm, `qemu` tests need QEMU,
`gdb` tests gdb, `svm` tests the SVM test host (QEMU and Debian's packages,
pyvmm/testing/svm).

Without them a developer sees a clear skip; under CI (CI=true) a missing
/dev/kvm, QEMU, gdb or SVM host is a failure, never a skip.
"""

import os
import shutil

import pytest

QEMU = "qemu-system-x86_64"


def _kvm_missing():
    if not os.path.exists("/dev/kvm"):
        return "/dev/kvm does not exist (no KVM on this host)"
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return "/dev/kvm is not readable and writable by this user"
    return None


def _qemu_missing():
    if shutil.which(QEMU) is None:
        return f"{QEMU} is not installed (apt-get install qemu-system-x86)"
    return None


def _svm_missing():
    from pyvmm.testing import svm
    return svm.missing()


REQUIREMENTS = {"kvm": _kvm_missing, "qemu": _qemu_missing,
                "gdb": lambda: None if shutil.which("gdb") else "gdb is not installed (apt-get install gdb)",
                "svm": _svm_missing}


def pytest_runtest_setup(item):
    for marker, missing in REQUIREMENTS.items():
        if item.get_closest_marker(marker) is None:
            continue
        reason = missing()
        if reason is None:
            continue
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI requires it: {reason}", pytrace=False)
        pytest.skip(reason)


@pytest.fixture(scope="session")
def svm_host_slot():
    """The session's one SVM test host slot (pyvmm/testing/svm), booted on
    first use: one L1 vCPU (two make QEMU's emulated SVM unreliable; a
    2-vCPU guest runs as two threads there)."""
    from pyvmm.testing.svm import HostSlot
    slot = HostSlot(cpus=1)
    yield slot
    slot.release()


@pytest.fixture
def svm_host(svm_host_slot):
    """The session's SVM test host, booted again when a test left it dead."""
    return svm_host_slot.get()
