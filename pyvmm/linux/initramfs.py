"""A minimal busybox initramfs whose /init does what the kernel command line asks.

The archive (newc cpio, gzipped when the output name ends in ".gz") holds:

    bin/busybox          the given binary, 0755
    bin/<applet>         symlinks to /bin/busybox for APPLETS (sh, mount, ...)
    dev/console, dev/null  device nodes, so /init has a console before devtmpfs
    proc/ sys/ tmp/ root/  mount points and scratch space
    init                 the busybox sh script below, 0755

/init mounts proc on /proc, sysfs on /sys and devtmpfs on /dev, prints
"pyvmm-initramfs: init reached", then runs the actions that the kernel
command line names, in order:

    pyvmm.run=ACTION[,ACTION...]     default: nproc,meminfo,poweroff

    nproc     prints "pyvmm-nproc: N"            (online CPUs)
    meminfo   prints "pyvmm-memtotal-kb: N"      (MemTotal of /proc/meminfo)
    uname     prints "pyvmm-uname: RELEASE"      (uname -r)
    shell     prints "pyvmm-initramfs: shell", then an interactive sh on the
              console; the list goes on when it exits
    poweroff  prints "pyvmm-initramfs: powering off", then `poweroff -f`
    reboot    prints "pyvmm-initramfs: rebooting", then `reboot -f`

An unknown action prints "pyvmm-initramfs: unknown action: NAME" and is
skipped. When the list ends without poweroff or reboot, /init powers off
(an init that exits would panic the kernel). Kernel parameters with a dot
are module parameters, which the kernel hands neither to init's argv nor
to its environment: that is why /init reads /proc/cmdline.

The console is the kernel's: add console=ttyS0 to see it on a serial port.
"""

import gzip
import os

from .cpio import CpioWriter
from .errors import AssetError

INIT_MARKER = "pyvmm-initramfs: init reached"
NPROC_PREFIX = "pyvmm-nproc: "
MEMTOTAL_PREFIX = "pyvmm-memtotal-kb: "
UNAME_PREFIX = "pyvmm-uname: "
SHELL_MARKER = "pyvmm-initramfs: shell"
POWEROFF_MARKER = "pyvmm-initramfs: powering off"
REBOOT_MARKER = "pyvmm-initramfs: rebooting"
DEFAULT_RUN = "nproc,meminfo,poweroff"

# Linked in /bin so that exec'd programs and other shells find them; busybox's
# own sh runs every applet even without a link.
APPLETS = (
    "sh", "ash", "cat", "cp", "cttyhack", "cut", "dd", "df", "dmesg", "echo",
    "env", "false", "free", "grep", "halt", "head", "hexdump", "kill", "less",
    "ln", "ls", "mkdir", "mount", "mv", "nproc", "poweroff", "ps", "reboot",
    "rm", "sed", "setsid", "sleep", "stty", "tail", "test", "top", "tr", "true",
    "umount", "uname", "vi", "wc",
)

INIT_SCRIPT = f"""#!/bin/sh
# pyvmm initramfs init: the convention is documented in pyvmm/linux/initramfs.py.
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
echo "{INIT_MARKER}"

# No globbing: a "*" on the command line must stay a word.
set -f
run={DEFAULT_RUN}
for word in $(cat /proc/cmdline); do
    case "$word" in
        pyvmm.run=*) run="${{word#pyvmm.run=}}" ;;
    esac
done

IFS=,
set -- $run
unset IFS
for action in "$@"; do
    case "$action" in
        nproc) echo "{NPROC_PREFIX}$(nproc)" ;;
        meminfo) echo "{MEMTOTAL_PREFIX}$(sed -n 's/^MemTotal: *\\([0-9]*\\) kB$/\\1/p' /proc/meminfo)" ;;
        uname) echo "{UNAME_PREFIX}$(uname -r)" ;;
        shell) echo "{SHELL_MARKER}"; setsid cttyhack sh ;;
        poweroff) echo "{POWEROFF_MARKER}"; poweroff -f ;;
        reboot) echo "{REBOOT_MARKER}"; reboot -f ;;
        *) echo "pyvmm-initramfs: unknown action: $action" ;;
    esac
done

echo "{POWEROFF_MARKER}"
poweroff -f
"""


def build_initramfs(busybox_path, out_path):
    """Writes the initramfs around the binary at `busybox_path` to `out_path`
    (gzipped when it ends in ".gz", plain cpio otherwise) and returns out_path.

    Any static binary will do for a test; only busybox makes it boot.
    """
    try:
        with open(busybox_path, "rb") as binary:
            busybox = binary.read()
    except OSError as error:
        raise AssetError(f"cannot read busybox {busybox_path}: {error.strerror or error}") from None
    archive = initramfs_archive(busybox)
    if out_path.endswith(".gz"):
        archive = gzip.compress(archive, mtime=0)
    _write_atomically(out_path, archive)
    return out_path


def initramfs_archive(busybox):
    """The uncompressed cpio archive around the busybox binary's bytes."""
    cpio = CpioWriter()
    for directory in ("bin", "dev", "proc", "sys"):
        cpio.directory(directory)
    cpio.directory("tmp", mode=0o1777)
    cpio.directory("root", mode=0o700)
    cpio.file("bin/busybox", busybox, mode=0o755)
    for applet in APPLETS:
        cpio.symlink(f"bin/{applet}", "/bin/busybox")
    cpio.char_device("dev/console", 5, 1, mode=0o600)
    cpio.char_device("dev/null", 1, 3, mode=0o666)
    cpio.file("init", INIT_SCRIPT.encode(), mode=0o755)
    return cpio.finish()


def _write_atomically(path, data):
    temporary = f"{path}.tmp-{os.getpid()}"
    try:
        with open(temporary, "wb") as out:
            out.write(data)
        os.replace(temporary, path)
    except OSError as error:
        _remove_quietly(temporary)
        raise AssetError(f"cannot write the initramfs {path}: {error.strerror or error}") from None


def _remove_quietly(path):
    try:
        os.remove(path)
    except OSError:
        pass
