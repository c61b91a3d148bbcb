"""A stock Debian kernel with the busybox initramfs, booted by pyvmm.

Which test runs depends on the host, and each says which host it found:
- everywhere: the kernel's early console must show its version banner, the
  exact command line pyvmm passed, the e820 map pyvmm built and the initrd
  where pyvmm put it (on a kvm_pvm host, where guest kernel code is
  emulated, this is as far as Linux gets within the time limit);
- with hardware virtualisation: a full boot to the initramfs marker with
  1 and 2 vCPUs, nproc and MemTotal checked, ending by poweroff and reboot,
  the 2-vCPU boots repeated. Elsewhere these same tests run inside the SVM
  test host (pyvmm/testing/svm, marker `svm`), one boot per pytest run
  there, retried once when L1 itself fails (see run_in_svm_host).
"""

import os
import re
import sys
import threading
import time

import pytest

from pyvmm.arch.x86_64 import memmap
from pyvmm.config import VmConfig
from pyvmm.virtio_options import DiskSpec, RngSpec
from pyvmm.linux import fetch
from pyvmm.linux import initramfs
from pyvmm.machine import Machine, read_kernel

pytestmark = [pytest.mark.kvm, pytest.mark.network]

MEMORY = 256 << 20
# Seconds for the early-boot proof: about 120 s here on a quiet kvm_pvm host
# (the kernel's decompression and early code are emulated), half as much
# again on a slower machine or under load.
EARLY_BOOT_DEADLINE = 300
FULL_BOOT_DEADLINE = 120
FULL_BOOT_ROUNDS = {1: 1, 2: 2}       # the 2-vCPU boots twice each
CASE_TIMEOUT = 400                    # one boot inside the SVM host, under load included
HOST_RETRIES = 1
REPOSITORY = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def host_kind():
    """'pvm' (software-assisted KVM: no full Linux boot), 'hardware' or 'unknown'."""
    if os.path.exists("/sys/module/kvm_pvm"):
        return "pvm"
    with open("/proc/cpuinfo") as cpuinfo:
        flags = cpuinfo.read()
    return "hardware" if re.search(r"\b(vmx|svm)\b", flags) else "unknown"


@pytest.fixture(scope="module")
def assets():
    return fetch()


def boot_until(assets, cmdline, cpus, done, deadline, **devices):
    """Boots the kernel; returns (result, console text) once `done(text)` or the run ends.
    `devices`: VmConfig's virtio options (console, rng, disks)."""
    config = VmConfig(kernel=assets.kernel, initrd=assets.initramfs, cmdline=cmdline,
                      memory=MEMORY, cpus=cpus, serial="buffer", timeout=deadline, **devices)
    image, options = read_kernel(config)
    with Machine(config, image, options) as machine:
        outcome = {}
        runner = threading.Thread(target=lambda: outcome.update(result=machine.run()))
        runner.start()
        while runner.is_alive():
            if done(machine.serial_output.decode(errors="replace")):
                machine.stop.request(0, "test-saw-enough")
            runner.join(0.5)
        return outcome["result"], machine.serial_output.decode(errors="replace"), machine


def e820_lines(text):
    return re.findall(r"BIOS-e820: \[mem (0x[0-9a-f]+)-(0x[0-9a-f]+)\] (\w+)", text)


def test_early_boot_shows_banner_cmdline_e820_and_initrd(assets, tmp_path):
    print(f"host: {host_kind()}")
    cmdline = "console=ttyS0 earlyprintk=serial panic=-1 pyvmm.test=early-boot"
    wanted = ("Linux version", "Command line:", "BIOS-e820", "RAMDISK:")
    disk = tmp_path / "disk.img"
    disk.write_bytes(bytes(1 << 20))
    started = time.monotonic()
    result, text, machine = boot_until(
        assets, cmdline, 1, lambda text: all(w in text for w in wanted) and "RAMDISK:" in text,
        EARLY_BOOT_DEADLINE, rng=RngSpec(), disks=[DiskSpec(str(disk), readonly=True)])
    print(f"early boot proof after {time.monotonic() - started:.0f} s, run ended: {result.reason}")
    assert f"Linux version {assets.version}" in text
    # pyvmm appends the virtio-mmio devices for Linux, as QEMU's microvm does.
    devices = "virtio_mmio.device=512@0xfeb02e00:23 virtio_mmio.device=512@0xfeb02c00:22"
    assert f"Command line: {cmdline} {devices}\n" in text.replace("\r", "")
    expected = [(f"{addr:#018x}", f"{addr + size - 1:#018x}", "usable" if kind == memmap.RAM
                 else "reserved") for addr, size, kind in memmap.memory_map(MEMORY)]
    assert e820_lines(text) == expected
    ramdisk = re.search(r"RAMDISK: \[mem (0x[0-9a-f]+)-(0x[0-9a-f]+)\]", text)
    size = os.path.getsize(assets.initramfs)
    start, end = int(ramdisk.group(1), 16), int(ramdisk.group(2), 16)
    assert start % 4096 == 0 and end - start + 1 >= size and end < MEMORY
    assert machine.memory is None      # closed with the run


def full_boots_here():
    return host_kind() == "hardware"


def full_boot_cases():
    delegated = [] if full_boots_here() else [pytest.mark.svm]
    for cpus, rounds in FULL_BOOT_ROUNDS.items():
        for ending, marker, reason in (("poweroff", initramfs.POWEROFF_MARKER, "poweroff"),
                                       ("reboot", initramfs.REBOOT_MARKER, "reset")):
            for attempt in range(rounds):
                yield pytest.param(cpus, ending, marker, reason, id=f"{ending}-{cpus}cpu-{attempt}",
                                   marks=delegated)


def run_in_svm_host(slot, node_id):
    """Runs one full-boot test (pytest node `node_id`) inside the SVM test
    host: (its CommandResult, the host failures before it). When L1 itself
    fails (it dies, or the boot hangs past CASE_TIMEOUT there: its kernel's
    KVM under QEMU's emulated SVM, see README) the host is booted again and
    the case retried, at most HOST_RETRIES times; a failure of the boot
    itself (a wrong nproc, a crash) is never retried."""
    from pyvmm.testing.svm import SvmHostError
    host_failures = []
    for _ in range(1 + HOST_RETRIES):
        host = slot.get()
        try:
            result = host.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", node_id],
                              cwd=REPOSITORY, timeout=CASE_TIMEOUT)
        except SvmHostError as error:
            host_failures.append(f"L1 failed: {error}")
            slot.release()
            continue
        if result.status == 124:
            host_failures.append(f"the boot hung in L1 past {CASE_TIMEOUT} s; L1 console tail:\n"
                                 f"{host.console()[-2000:]}")
            slot.release()
            continue
        return result, host_failures
    pytest.fail("the SVM host failed every time:\n" + "\n".join(host_failures))


@pytest.mark.parametrize("cpus, ending, marker, reason", list(full_boot_cases()))
def test_full_boot_to_init(request, assets, cpus, ending, marker, reason):
    if not full_boots_here():
        result, host_failures = run_in_svm_host(request.getfixturevalue("svm_host_slot"),
                                                f"{__file__}::{request.node.name}")
        for failure in host_failures:
            print(f"retried after an SVM host failure: {failure}")
        assert result.status == 0, (f"inside the SVM host ({result.seconds:.0f} s):\n"
                                    f"{result.stdout.decode(errors='replace')[-4000:]}")
        return
    cmdline = f"console=ttyS0 panic=-1 pyvmm.run=nproc,meminfo,{ending}"
    result, text, _ = boot_until(assets, cmdline, cpus, lambda text: False, FULL_BOOT_DEADLINE)
    assert initramfs.INIT_MARKER in text
    assert f"{initramfs.NPROC_PREFIX}{cpus}" in text
    memtotal_kb = int(re.search(rf"{initramfs.MEMTOTAL_PREFIX}(\d+)", text).group(1))
    assert 0.8 * MEMORY / 1024 < memtotal_kb <= MEMORY / 1024
    assert marker in text
    assert (result.status, result.reason) == (0, reason)
