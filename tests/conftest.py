"""Test-wide markers: `kvm` tests need /dev/kvm, `qemu` tests need QEMU, `gdb`
tests need gdb, `network` tests download Debian packages (unless they are
already cached), `install` tests install pyvmm with the system's python3,
`svm` tests run inside the SVM test host (QEMU and Debian's packages,
pyvmm/testing/svm), `tap` tests make network namespaces with TAP devices
(root, iproute2, /dev/net/tun; pyvmm/testing/netns.py).

Without them a developer sees a clear skip; under CI (CI=true) a missing
requirement is a failure, never a skip.
"""

import glob
import os
import re
import shutil
import socket
import subprocess

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


def _mirror_hosts():
    """The hosts apt downloads from, as its sources name them."""
    hosts = []
    for path in ["/etc/apt/sources.list", *glob.glob("/etc/apt/sources.list.d/*")]:
        try:
            with open(path) as sources:
                hosts += re.findall(r"\bhttps?://([^/\s:]+)", sources.read())
        except OSError:
            pass
    return list(dict.fromkeys(hosts)) or ["deb.debian.org"]


def _network_missing():
    from pyvmm.linux.assets import cached, default_cache_dir
    if cached(default_cache_dir()) is not None:
        return None                                 # nothing to download
    if shutil.which("apt-get") is None:
        return "apt-get is not installed: the Debian kernel cannot be fetched"
    for host in _mirror_hosts():
        try:
            socket.create_connection((host, 80), timeout=5).close()
            return None
        except OSError:
            continue
    return f"no Debian mirror is reachable ({', '.join(_mirror_hosts())}) and no kernel is cached"


SYSTEM_PYTHON = "/usr/bin/python3"
# venv and ensurepip (python3-venv), and Python.h to build the extension (python3-dev).
_BUILD_READY = ("import ensurepip, os, sysconfig, venv; "
                "assert os.path.exists(os.path.join(sysconfig.get_paths()['include'], 'Python.h'))")


def _system_python_missing():
    if not os.path.exists(SYSTEM_PYTHON):
        return f"{SYSTEM_PYTHON} does not exist (not a Debian or Ubuntu system?)"
    if subprocess.run([SYSTEM_PYTHON, "-c", _BUILD_READY], capture_output=True).returncode:
        return "the system python3 cannot build pyvmm (apt-get install python3-venv python3-dev)"
    for tool in ("gcc", "make"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed"
    if not (os.environ.get("PIP_FIND_LINKS") or os.environ.get("PIP_INDEX_URL")):
        try:
            socket.create_connection(("pypi.org", 443), timeout=5).close()
        except OSError:
            return "no package index is reachable (pypi.org) for pip's build dependencies"
    return None


def _svm_missing():
    from pyvmm.testing import svm
    return svm.missing()


def _tap_missing():
    from pyvmm.testing import netns
    return netns.missing()


REQUIREMENTS = {"kvm": _kvm_missing, "qemu": _qemu_missing, "tap": _tap_missing,
                "gdb": lambda: None if shutil.which("gdb") else "gdb is not installed (apt-get install gdb)",
                "network": _network_missing, "install": _system_python_missing, "svm": _svm_missing}


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
