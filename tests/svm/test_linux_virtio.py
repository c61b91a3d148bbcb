"""Linux's own virtio drivers as the client of pyvmm's devices: the stock
Debian kernel, booted by pyvmm inside the SVM host, finds the virtio-mmio
devices pyvmm declares in its ACPI tables, reads and writes the disk image
(checksums compared on the host), takes entropy from /dev/hwrng and prints
on hvc0."""

import hashlib
import os
import random

from pyvmm.testing.svm import run_linux_script

SECTOR = 512
IMAGE_BYTES = 4 << 20
WRITE_SECTOR = 8
WRITTEN = b"written by the virtio-blk driver of the guest"

SCRIPT = f"""
cat /sys/bus/virtio/devices/*/device | sort | tr '\\n' ' '; echo
echo "size $(cat /sys/class/block/vda/size)"
echo "read $(sha256sum /dev/vda | cut -d' ' -f1)"
printf '{WRITTEN.decode()}' | dd of=/dev/vda bs={SECTOR} seek={WRITE_SECTOR} conv=notrunc,fsync 2>/dev/null
echo "rng $(cat /sys/class/misc/hw_random/rng_current)"
echo "entropy $(dd if=/dev/hwrng bs=32 count=1 2>/dev/null | wc -c)"
echo "through hvc0" > /dev/hvc0
"""


def test_linux_drives_pyvmms_virtio_disk_entropy_and_console(svm_host):
    image = os.path.join(svm_host.job_dir, "disk.img")
    content = random.Random(7).randbytes(IMAGE_BYTES)
    with open(image, "wb") as disk:
        disk.write(content)
    try:
        run = run_linux_script(svm_host, SCRIPT, timeout=240,
                               pyvmm_args=["--disk", f"path={image},id=disk0", "--rng=", "--console", "virtio"])
        with open(image, "rb") as disk:
            after = disk.read()
    finally:
        os.remove(image)
    assert (run.status, run.script_status) == (0, 0), run
    lines = run.script_output.splitlines()
    assert lines[0].split() == ["0x0002", "0x0003", "0x0004"], run        # block, console, entropy
    assert f"size {IMAGE_BYTES // SECTOR}" in lines, run
    assert f"read {hashlib.sha256(content).hexdigest()}" in lines, run
    assert "rng virtio_rng.0" in lines and "entropy 32" in lines, run
    assert "through hvc0" in run.console, run
    offset = WRITE_SECTOR * SECTOR
    assert after[offset:offset + len(WRITTEN)] == WRITTEN
    assert after[:offset] == content[:offset] and after[offset + SECTOR:] == content[offset + SECTOR:]
