"""The SVM test host itself (pyvmm/testing/svm): a command runs inside L1
with the caller's interpreter, checkout and environment, on a real
SVM-backed /dev/kvm; its status, output and timeout come back; writes stay
inside; a dead L1 is reported, and closing leaves nothing behind."""

import fcntl
import json
import os
import sys
import time

import pytest

from pyvmm.testing.svm import SvmHost, SvmHostError
from pyvmm.testing.svm import assets as host_assets

REPOSITORY = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

PROBE = """
import json, os, sys, pyvmm
flags = open("/proc/cpuinfo").read().split()
print(json.dumps({"executable": sys.executable, "prefix": sys.prefix, "pyvmm": pyvmm.__file__,
                  "cwd": os.getcwd(), "kvm": os.path.exists("/dev/kvm"),
                  "svm": "svm" in flags, "npt": "npt" in flags,
                  "pvm": os.path.exists("/sys/module/kvm_pvm"), "release": os.uname().release}))
"""


def test_command_runs_with_the_callers_interpreter_and_checkout_on_svm(svm_host):
    result = svm_host.run([sys.executable, "-c", PROBE], cwd=REPOSITORY)
    assert result.status == 0, result
    seen = json.loads(result.stdout)
    import pyvmm
    assert seen == {"executable": sys.executable, "prefix": sys.prefix, "pyvmm": pyvmm.__file__,
                    "cwd": REPOSITORY, "kvm": True, "svm": True, "npt": True, "pvm": False,
                    "release": svm_host.version}


def test_status_stdout_and_stderr_come_back_apart(svm_host):
    result = svm_host.shell("echo out; echo err >&2; printf 'no newline'; exit 7")
    assert (result.status, result.stdout, result.stderr) == (7, "out\nno newline", "err\n")


def test_environment_is_exactly_the_one_given(svm_host):
    value = "two words, 'quotes' and $dollars"
    result = svm_host.run(["/usr/bin/env"], env={"PYVMM_PROBE": value, "PATH": "/usr/bin:/bin"})
    assert result.status == 0, result
    assert sorted(result.stdout.splitlines()) == ["PATH=/usr/bin:/bin", f"PYVMM_PROBE={value}"]


def test_timeout_ends_the_command_and_the_host_goes_on(svm_host):
    started = time.monotonic()
    result = svm_host.shell("echo before; sleep 100; echo after", timeout=3)
    assert result.status == 124 and result.stdout == "before\n", result
    assert time.monotonic() - started < 20
    assert svm_host.shell("echo still here").stdout == "still here\n"


def test_writes_stay_in_l1_except_in_the_job_folder(svm_host):
    inside_only = os.path.join(REPOSITORY, f".svm-write-probe-{os.getpid()}")
    shared = os.path.join(svm_host.job_dir, "written-inside")
    result = svm_host.shell(f"echo a > {inside_only} && cat {inside_only} && echo b > {shared} "
                            "&& touch /usr/svm-probe && echo tmp > /tmp/svm-probe && cat /tmp/svm-probe")
    assert (result.status, result.stdout) == (0, "a\ntmp\n"), result
    assert not os.path.exists(inside_only) and not os.path.exists("/usr/svm-probe")
    with open(shared) as file:
        assert file.read() == "b\n"


def test_a_host_that_dies_is_reported(svm_host):
    with pytest.raises(SvmHostError, match=r"the SVM host stopped \(QEMU status 0\) while running"):
        svm_host.shell("echo o > /proc/sysrq-trigger; sleep 30", timeout=60)
    assert not svm_host.alive
    with pytest.raises(SvmHostError, match="not running"):
        svm_host.shell("true")


def test_close_leaves_no_process_folder_or_lock(svm_host_slot):
    svm_host_slot.release()                    # one L1 at a time
    host = SvmHost(cpus=2)
    with host:
        pid, folder = host._qemu.pid, host.job_dir
        assert host.shell("nproc").stdout == "2\n"
    assert not os.path.exists(folder)
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    with open(os.path.join(host_assets.default_cache_dir(), ".run-lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)        # free again
    assert "pyvmm-svm: ready" in host.console()                # kept for diagnosis
