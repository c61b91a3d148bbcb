"""run_linux_script: a shell script inside Debian's kernel booted by pyvmm
inside the SVM host. The mechanism the device tests (virtio-blk, -rng,
console, net) use: Linux's own drivers as the client of pyvmm's devices."""

import os

from pyvmm.testing.svm import run_linux_script


def test_script_runs_in_the_linux_guest_and_its_status_and_output_come_back(svm_host):
    payload = os.path.join(svm_host.job_dir, "payload")
    run = run_linux_script(svm_host, "echo guest says hi; nproc; grep -c processor /proc/cpuinfo; "
                                     "uname -r >&2; ls /pyvmm-script; exit 3", cpus=2)
    assert (run.status, run.script_status) == (0, 3), run
    lines = run.script_output.splitlines()
    assert lines[:3] == ["guest says hi", "2", "2"], run
    assert lines[3].endswith("-cloud-amd64") and lines[4] == "/pyvmm-script", run
    assert not os.path.exists(payload)


def test_a_script_that_never_ends_is_cut_by_the_timeout(svm_host):
    """pyvmm's --timeout ends the guest; the script has no status. Whether the
    guest reached the script within 45 s depends on the machine's load."""
    run = run_linux_script(svm_host, "echo waiting; sleep 1000", timeout=45)
    assert (run.status, run.script_status) == (124, None), run
    assert run.script_output in ("", "waiting\n"), run
    assert "pyvmm: timed out after 45 s" in run.stderr, run
