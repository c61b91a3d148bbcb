"""Test-wide markers: `kvm` tests need /dev/kvm, `qemu` tests need QEMU.

Without them a developer sees a clear skip; under CI (CI=true) a missing
/dev/kvm or QEMU is a failure, never a skip.
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


REQUIREMENTS = {"kvm": _kvm_missing, "qemu": _qemu_missing,
                "gdb": lambda: None if shutil.which("gdb") else "gdb is not installed (apt-get install gdb)"}


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
