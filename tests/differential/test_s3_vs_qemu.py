"""ACPI S3 suspend and resume: s3.bin under QEMU (TCG) and pyvmm.

s3.bin (guests/README.md) writes the FACS waking vector, arms the CMOS RTC
alarm a second ahead with AIE and RTC_EN, suspends through PM1a_CNT with
the DSDT's \\_S3_, and reports from its waking vector what the firmware's
resume path left: CS, CR0, PM1_STS, PM1_EN, register B, whether it woke in
the alarm's second. Every line is defined by the ACPI spec, the MC146818
and QEMU (with SeaBIOS) as the reference, so the outputs and exit statuses
must be equal:

    qemu-system-x86_64 -accel tcg ... -m 128 -kernel s3.bin -no-reboot
    python -m pyvmm run s3.bin --memory 128M --timeout 60

A resume request is QEMU's QMP system_wakeup against Machine.wake().
"""

import json
import os
import socket
import struct
import subprocess
import sys
import threading
import time

import pytest

from pyvmm import guests
from pyvmm.config import VmConfig
from pyvmm.machine import Machine

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from qemu_runner import QEMU_ARGS, run_pyvmm, run_qemu  # noqa: E402

pytestmark = [pytest.mark.qemu, pytest.mark.kvm]

MEMORY_MIB = 128
PARAM_OFFSET = 0x24                 # s3.bin's param_n: the wake sources it arms
RTC_EN, ALARM, NO_VECTOR = 1, 2, 8
RESUMED = ["s3 1", "sleeping", "resumed", "cs 0x00003000", "cr0 0x00000010"]
ALARM_WAKE = RESUMED + ["pm1_sts 0x00008401",       # WAK_STS, RTC_STS, TMR_STS
                        "pm1_en 0x00000000", "stopped at once", "rtc_b 0x02", "alarm second ok"]
REQUEST_WAKE = RESUMED + ["pm1_sts 0x00008101",     # WAK_STS, PWRBTN_STS, TMR_STS
                          "pm1_en 0x00000000", "stopped at once"]


def s3_guest(tmp_path, wake_sources):
    image = bytearray(open(guests.path("s3.bin"), "rb").read())
    struct.pack_into("<I", image, PARAM_OFFSET, wake_sources)
    path = tmp_path / f"s3-{wake_sources}.bin"
    path.write_bytes(image)
    return str(path)


def describe(host, result):
    return f"under {host}: status {result.status}, output:\n{result.text}\nstderr: " \
           f"{result.stderr.decode(errors='replace')[-2000:]}"


def test_rtc_alarm_wake_resumes_at_the_waking_vector_as_under_qemu():
    qemu = run_qemu(guests.path("s3.bin"), memory_mib=MEMORY_MIB)
    assert (qemu.status, qemu.lines) == (1, ALARM_WAKE), describe("qemu", qemu)
    pyvmm = run_pyvmm(guests.path("s3.bin"), memory_mib=MEMORY_MIB)
    assert (pyvmm.status, pyvmm.lines) == (qemu.status, qemu.lines), describe("pyvmm", pyvmm)


def test_no_waking_vector_reboots_as_under_qemu(tmp_path):
    """SeaBIOS reboots when the FACS holds no vector; with -no-reboot QEMU
    then exits 0, and pyvmm ends the run as it does on a reset."""
    kernel = s3_guest(tmp_path, RTC_EN | ALARM | NO_VECTOR)
    qemu = run_qemu(kernel, memory_mib=MEMORY_MIB)
    assert (qemu.status, qemu.lines) == (0, ["s3 1", "sleeping"]), describe("qemu", qemu)
    pyvmm = run_pyvmm(kernel, memory_mib=MEMORY_MIB)
    assert (pyvmm.status, pyvmm.lines) == (qemu.status, qemu.lines), describe("pyvmm", pyvmm)
    assert b"no waking vector" in pyvmm.stderr


def qemu_with_system_wakeup(kernel, tmp_path, timeout=60):
    """(status, stdout lines) of QEMU running `kernel`, sent QMP's
    system_wakeup once the guest printed "sleeping" and QEMU reports it
    suspended."""
    qmp_path = str(tmp_path / "qmp.sock")
    command = [*QEMU_ARGS, "-m", str(MEMORY_MIB), "-kernel", kernel,
               "-qmp", f"unix:{qmp_path},server=on,wait=off"]
    process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE)
    output = []
    reader = threading.Thread(target=lambda: output.extend(process.stdout))
    reader.start()
    deadline = time.monotonic() + timeout
    try:
        while b"sleeping\n" not in output:
            assert time.monotonic() < deadline and process.poll() is None, output
            time.sleep(0.05)
        with socket.socket(socket.AF_UNIX) as qmp:
            qmp.connect(qmp_path)
            replies = qmp.makefile("rw")
            replies.readline()                                   # the greeting

            def execute(name):
                replies.write(json.dumps({"execute": name}) + "\n")
                replies.flush()
                while True:
                    reply = json.loads(replies.readline())
                    if "return" in reply or "error" in reply:
                        return reply

            execute("qmp_capabilities")
            while execute("query-status")["return"]["status"] != "suspended":
                assert time.monotonic() < deadline
                time.sleep(0.05)
            assert execute("system_wakeup") == {"return": {}}
        status = process.wait(max(1.0, deadline - time.monotonic()))
    finally:
        if process.poll() is None:
            process.kill()
        process.wait()
        reader.join(10)
        process.stdout.close()
        process.stderr.close()
    return status, b"".join(output).decode().splitlines()


def pyvmm_with_wake(kernel, timeout=60):
    """(status, console lines) of pyvmm running `kernel` in-process, with
    Machine.wake() once the machine is suspended."""
    config = VmConfig(kernel=kernel, serial="buffer", memory=MEMORY_MIB << 20)
    with Machine(config) as machine:
        machine.external_wake = True
        outcome = {}
        runner = threading.Thread(target=lambda: outcome.update(result=machine.run(timeout=timeout)))
        runner.start()
        deadline = time.monotonic() + timeout
        while not machine.suspended:
            assert time.monotonic() < deadline and runner.is_alive(), machine.serial_output
            time.sleep(0.01)
        assert machine.wake()
        runner.join(timeout)
        assert not runner.is_alive()
        return outcome["result"].status, machine.serial_output.decode().splitlines()


def test_a_resume_request_wakes_as_qemus_system_wakeup(tmp_path):
    kernel = s3_guest(tmp_path, 0)                 # nothing armed: only the host can wake it
    qemu = qemu_with_system_wakeup(kernel, tmp_path)
    assert qemu == (1, REQUEST_WAKE)
    assert pyvmm_with_wake(kernel) == qemu
