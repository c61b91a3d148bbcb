"""A shell script run inside a stock Linux guest booted by pyvmm inside the SVM host.

    from pyvmm.testing.svm import SvmHost, run_linux_script
    with SvmHost() as host:
        run = run_linux_script(host, "cat /sys/class/block/vda/size", pyvmm_args=["--device", ...])
        run.script_status, run.script_output, run.status, run.console

The guest is pyvmm.linux's (Debian's cloud kernel, the busybox initramfs),
booted with `rdinit=/pyvmm-script-init`: a second cpio archive, appended to
the initramfs, adds that init and the script. The init mounts proc, sys and
dev, prints BEGIN_MARKER, runs the script with busybox sh (stdout and stderr
to the console), prints END_PREFIX and its status, and powers off. Files a
test shares with the guest (a disk image, say) belong in host.job_dir, which
L1 sees at the same path and can write.
"""

import gzip
import os
import re
import sys

from pyvmm.linux import fetch as fetch_linux
from pyvmm.linux.cpio import CpioWriter

BEGIN_MARKER = "pyvmm-script: begin"
END_PREFIX = "pyvmm-script: end status "
SCRIPT_INIT = "pyvmm-script-init"

MODULES_DIR = "pyvmm-modules"

_INIT = f"""#!/bin/sh
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
for module in $(cat /{MODULES_DIR}/order); do insmod /{MODULES_DIR}/$module; done
echo "{BEGIN_MARKER}"
sh /pyvmm-script 2>&1
echo "{END_PREFIX}$?"
poweroff -f
"""


class LinuxRun:
    """status: pyvmm's exit status; console: the guest's serial output;
    script_status: the script's exit status (None when it did not finish);
    script_output: what it printed; stderr: pyvmm's."""

    def __init__(self, status, console, stderr):
        self.status = status
        self.console = console
        self.stderr = stderr
        text = console.replace("\r", "")
        begin = text.find(BEGIN_MARKER + "\n")
        end = re.search(rf"^{re.escape(END_PREFIX)}(\d+)$", text, re.M)
        self.script_status = int(end.group(1)) if begin >= 0 and end else None
        stop = end.start() if end else len(text)
        self.script_output = text[begin + len(BEGIN_MARKER) + 1:stop] if begin >= 0 else ""

    def __repr__(self):
        return (f"LinuxRun(status={self.status}, script_status={self.script_status}, "
                f"script_output={self.script_output[-2000:]!r}, console tail={self.console[-3000:]!r}, "
                f"stderr={self.stderr[-1000:]!r})")


def script_initrd(script, modules=()):
    """The gzipped cpio archive that adds the script, its init and the kernel
    `modules` (paths, in loading order) the init loads first: the virtio
    drivers are modules in Debian's cloud kernel."""
    cpio = CpioWriter()
    cpio.file(SCRIPT_INIT, _INIT.encode(), mode=0o755)
    cpio.file("pyvmm-script", script.encode(), mode=0o755)
    cpio.directory(MODULES_DIR)
    for module in modules:
        with open(module, "rb") as data:
            cpio.file(f"{MODULES_DIR}/{os.path.basename(module)}", data.read(), mode=0o644)
    cpio.file(f"{MODULES_DIR}/order", "".join(os.path.basename(m) + "\n" for m in modules).encode(), mode=0o644)
    return gzip.compress(cpio.finish(), mtime=0)


def run_linux_script(host, script, cpus=1, memory="256M", pyvmm_args=(), timeout=120,
                     cmdline="console=ttyS0 panic=-1 quiet"):
    """Boots the Linux guest with `pyvmm run` inside `host` (an SvmHost) and runs
    `script` (busybox sh) in it; returns a LinuxRun."""
    assets = fetch_linux()           # on the machine: L1 has no network
    with open(assets.initramfs, "rb") as base:
        initrd = base.read() + script_initrd(script, assets.modules)
    path = os.path.join(host.job_dir, f"script-initrd-{os.getpid()}-{id(script)}.cpio.gz")
    with open(path, "wb") as out:
        out.write(initrd)
    try:
        result = host.run([sys.executable, "-m", "pyvmm", "run", assets.kernel, "--initrd", path,
                           "--cmdline", f"{cmdline} rdinit=/{SCRIPT_INIT}", "--memory", memory,
                           "--cpus", str(cpus), "--timeout", str(timeout), *pyvmm_args],
                          timeout=timeout + 30)
    finally:
        os.remove(path)
    return LinuxRun(result.status, result.stdout, result.stderr)
