"""A booted Linux guest paused, snapshotted and shut down through the API,
then restored in a new process, all inside the SVM host: the guest's own
timer-driven loop goes on where it stopped, with nothing repeated or lost."""

import os
import re
import shlex
import sys

from pyvmm.linux import fetch as fetch_linux
from pyvmm.testing.svm.linux_guest import SCRIPT_INIT, script_initrd

TICKS = 40          # 20 s: time for `pyvmm remote` to start in L1 while the guest ticks
SCRIPT = f"for i in $(seq 1 {TICKS}); do echo tick $i; sleep 0.5; done; exit 7"


def test_a_booted_linux_guest_snapshotted_through_the_api_goes_on_after_a_restore(svm_host):
    assets = fetch_linux()
    job = svm_host.job_dir
    initrd = os.path.join(job, "snapshot-initrd.cpio.gz")
    with open(assets.initramfs, "rb") as base, open(initrd, "wb") as out:
        out.write(base.read() + script_initrd(SCRIPT))
    pyvmm = f"{shlex.quote(sys.executable)} -m pyvmm"
    # The socket and the snapshot live in L1's own file system: the job folder
    # is a 9p mount, which takes no unix socket.
    api, snapshot = "--api-socket $work/api.sock", "$work/snapshot"
    before, after = f"{job}/before.log", f"{job}/after.log"
    command = f"""
work=$(mktemp -d)
{pyvmm} run {assets.kernel} --initrd {initrd} --memory 256M --timeout 300 {api} --serial file:{before} \\
    --cmdline "console=ttyS0 panic=-1 quiet rdinit=/{SCRIPT_INIT}" &
vmm=$!
for i in $(seq 1 600); do grep -q "tick 3" {before} 2>/dev/null || ! kill -0 $vmm && break; sleep 0.2; done
{pyvmm} remote {api} pause && {pyvmm} remote {api} snapshot {snapshot} && {pyvmm} remote {api} shutdown
wait $vmm
echo "first run $?"
{pyvmm} run --restore {snapshot} --serial file:{after} --timeout 300
echo "restored run $?"
rm -rf "$work"
"""
    try:
        result = svm_host.shell(command, timeout=700)
        with open(before) as text:
            first = text.read().replace("\r", "")
        with open(after) as text:
            second = text.read().replace("\r", "")
    finally:
        for path in (initrd, before, after):
            if os.path.exists(path):
                os.remove(path)
    assert result.status == 0 and "first run 0" in result.stdout and "restored run 0" in result.stdout, result
    ticks_before = [int(n) for n in re.findall(r"^tick (\d+)$", first, re.M)]
    ticks_after = [int(n) for n in re.findall(r"^tick (\d+)$", second, re.M)]
    assert len(ticks_before) >= 3 and ticks_after, (first, second)
    assert ticks_before + ticks_after == list(range(1, TICKS + 1)), (first, second)
    assert "pyvmm-script: end status 7" in second, second
