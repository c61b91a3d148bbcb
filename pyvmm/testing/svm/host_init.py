"""/init of the SVM test host (busybox sh), and the protocol it speaks.

It loads the modules in lib/modules/load-order, then builds the root the
commands run in:

    /lower      the machine's root over 9p (mount tag "host"), read-only
    /newroot    an overlay of /lower with a tmpfs on top: everything is
                where it is on the machine (the checkout, the virtual
                environment, the caches), and writes land in L1's memory
    /newroot/proc, sys, dev, dev/pts, dev/shm, run   mounted afresh
    /newroot$JOB  the job folder (mount tag "job"), writable, shared with
                the machine at the same path (pyvmm.job= on the command line)

It writes $JOB/ready ("ok RELEASE" or "error: WHY"), then serves commands:
for N = 1, 2, ... it waits for $JOB/N.sh (written whole, then renamed into
place), runs it with the host's /bin/sh chrooted into /newroot, stdin from
/dev/null, stdout and stderr to $JOB/N.out and $JOB/N.err, and writes its
exit status to $JOB/N.status (renamed into place, so it is whole). The file
$JOB/poweroff powers the host off.
"""

VERSION = 1

READY_FILE = "ready"
POWEROFF_FILE = "poweroff"
MOUNT_TAG_ROOT = "host"
MOUNT_TAG_JOB = "job"
JOB_PARAMETER = "pyvmm.job"
MSIZE = 262144

INIT = f"""#!/bin/sh
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
for word in $(cat /proc/cmdline); do
    case "$word" in {JOB_PARAMETER}=*) job="${{word#{JOB_PARAMETER}=}}" ;; esac
done
fail() {{
    echo "pyvmm-svm: $*"
    [ -n "$job" ] && mkdir -p /j && mount -t 9p -o trans=virtio,version=9p2000.L {MOUNT_TAG_JOB} /j \\
        && echo "error: $*" > /j/{READY_FILE}
    poweroff -f
}}
[ -n "$job" ] || fail "no {JOB_PARAMETER}= on the kernel command line"
for module in $(cat /lib/modules/load-order); do
    insmod /lib/modules/$module.ko || fail "insmod $module failed"
done
opts=trans=virtio,version=9p2000.L,msize={MSIZE}
mount -t 9p -o $opts,ro {MOUNT_TAG_ROOT} /lower || fail "cannot mount the machine's root"
mount -t tmpfs -o mode=0755 tmpfs /upper && mkdir /upper/data /upper/work || fail "no tmpfs"
mount -t overlay -o lowerdir=/lower,upperdir=/upper/data,workdir=/upper/work overlay /newroot \\
    || fail "cannot mount the overlay root"
r=/newroot
mount -t proc proc $r/proc && mount -t sysfs sysfs $r/sys && mount -t devtmpfs devtmpfs $r/dev \\
    && mkdir -p $r/dev/pts $r/dev/shm && mount -t devpts devpts $r/dev/pts \\
    && mount -t tmpfs tmpfs $r/dev/shm && mount -t tmpfs tmpfs $r/run || fail "cannot mount /proc, /sys, /dev"
mkdir -p $r$job && mount -t 9p -o $opts {MOUNT_TAG_JOB} $r$job || fail "cannot mount the job folder"
j=$r$job
if [ ! -c /dev/kvm ]; then
    fail "no /dev/kvm: $(grep -c -w svm /proc/cpuinfo) CPUs show svm"
fi
echo "ok $(uname -r)" > $j/{READY_FILE}.tmp && mv $j/{READY_FILE}.tmp $j/{READY_FILE}
echo "pyvmm-svm: ready"
n=1
while :; do
    if [ -e $j/$n.sh ]; then
        chroot $r /bin/sh $job/$n.sh < /dev/null > $j/$n.out 2> $j/$n.err
        echo $? > $j/$n.status.tmp && mv $j/$n.status.tmp $j/$n.status
        n=$((n + 1))
    elif [ -e $j/{POWEROFF_FILE} ]; then
        poweroff -f
    else
        sleep 0.05
    fi
done
"""
