"""Test-wide markers: `kvm` tests need /dev/kvm, `qemu` tests need QEMU, `gdb`
tests need gdb, `network` tests download Debian packages (unless they are
already cached).

Without them a developer sees a clear skip; under CI (CI=true) a missing
requirement is a failure, never a skip.
"""

import glob
import os
import re
import shutil
import socket

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


REQUIREMENTS = {"kvm": _kvm_missing, "qemu": _qemu_missing,
                "gdb": lambda: None if shutil.which("gdb") else "gdb is not installed (apt-get install gdb)",
                "network": _network_missing}


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
