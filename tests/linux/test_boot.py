"""A stock Debian kernel with the busybox initramfs, booted by pyvmm.

Which test runs depends on the host, and each says which host it found:
- everywhere: the kernel's early console must show its version banner, the
  exact command line pyvmm passed, the e820 map pyvmm built and the initrd
  where pyvmm put it (on a kvm_pvm host, where guest kernel code is
  emulated, this is as far as Linux gets within the time limit);
- with hardware virtualisation: a full boot to the initramfs marker with
  1 and 2 vCPUs, nproc and MemTotal checked, ending by poweroff and reboot,
  the 2-vCPU boots repeated. Elsewhere these same tests run inside the SVM
  test host (pyvmm/testing/svm, marker `svm`): one pytest run of this file
  there, whose per-test outcomes the tests here report.
"""

import os
import re
import sys
import threading
import time
import xml.etree.ElementTree as ElementTree

import pytest

from pyvmm.arch.x86_64 import memmap
from pyvmm.config import VmConfig
from pyvmm.virtio_options import DiskSpec, RngSpec
from pyvmm.linux import fetch
from pyvmm.linux import initramfs
from pyvmm.machine import Machine, read_kernel

pytestmark = [pytest.mark.kvm, pytest.mark.network]

MEMORY = 256 << 20
EARLY_BOOT_DEADLINE = 175      # seconds: the proof must come within three minutes
FULL_BOOT_DEADLINE = 120
FULL_BOOT_ROUNDS = {1: 1, 2: 5}       # the 2-vCPU boots are repeated to show they are reliable
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


@pytest.fixture(scope="module")
def full_boots_in_svm_host(svm_host_slot, assets):
    """{test name: (outcome, details)} of this file's full-boot tests run by
    pytest inside the SVM test host (assets fetched here first: L1 has no
    network)."""
    from pyvmm.testing.svm import SvmHostError
    host = svm_host_slot.get()
    report = os.path.join(host.job_dir, "full-boots.xml")
    try:
        # -v: should L1 stop answering, the output so far names the test that hung.
        result = host.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-v",
                           f"--junitxml={report}", f"{__file__}::test_full_boot_to_init"],
                          cwd=REPOSITORY, timeout=1500)
    except SvmHostError as error:         # L1 died or hung: every test shows why
        return {"(run)": (str(error), host.console())}
    outcomes = {}
    if os.path.exists(report):
        for case in ElementTree.parse(report).iter("testcase"):
            problems = [child for child in case if child.tag in ("failure", "error", "skipped")]
            outcome = problems[0].tag if problems else "passed"
            details = "\n".join((child.get("message") or "") + "\n" + (child.text or "") for child in problems)
            outcomes[case.get("name")] = (outcome, details)
    outcomes["(run)"] = (result, host.console())
    return outcomes


@pytest.mark.parametrize("cpus, ending, marker, reason", list(full_boot_cases()))
def test_full_boot_to_init(request, assets, cpus, ending, marker, reason):
    if not full_boots_here():
        outcomes = request.getfixturevalue("full_boots_in_svm_host")
        run, console = outcomes["(run)"]
        outcome, details = outcomes.get(request.node.name, ("missing", ""))
        assert outcome == "passed", (f"inside the SVM host: {outcome}\n{details}\n"
                                     f"pytest there: {run}\nL1 console tail:\n{console[-3000:]}")
        return
    cmdline = f"console=ttyS0 panic=-1 pyvmm.run=nproc,meminfo,{ending}"
    result, text, _ = boot_until(assets, cmdline, cpus, lambda text: False, FULL_BOOT_DEADLINE)
    assert initramfs.INIT_MARKER in text
    assert f"{initramfs.NPROC_PREFIX}{cpus}" in text
    memtotal_kb = int(re.search(rf"{initramfs.MEMTOTAL_PREFIX}(\d+)", text).group(1))
    assert 0.8 * MEMORY / 1024 < memtotal_kb <= MEMORY / 1024
    assert marker in text
    assert (result.status, result.reason) == (0, reason)
