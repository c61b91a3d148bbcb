"""ACPI S3 on KVM: s3.bin (guests/README.md) suspends and is woken by the RTC
alarm, the power button or a resume request, resumes at its waking vector;
a guest with nothing armed ends the run; the vCPUs are reset on the way.
The same guest against QEMU: tests/differential/test_s3_vs_qemu.py."""

import pathlib
import re
import struct
import subprocess
import sys
import threading
import time

import pytest

from pyvmm import guests
from pyvmm._kvm import ffi, lib
from pyvmm.arch.x86_64 import acpi, msr, power_on
from pyvmm.config import VmConfig
from pyvmm.kvm._ioctl import ioctl
from pyvmm.machine import Machine

PARAM_OFFSET = 0x24
RTC_EN, ALARM, X_VECTOR = 1, 2, 4
RESUMED = ["s3 1", "sleeping", "resumed", "cs 0x00003000", "cr0 0x00000010"]
ALARM_WAKE = RESUMED + ["pm1_sts 0x00008401", "pm1_en 0x00000000", "stopped at once",
                        "rtc_b 0x02", "alarm second ok"]
BUTTON_WAKE = RESUMED + ["pm1_sts 0x00008101", "pm1_en 0x00000000", "stopped at once"]


def s3_image(wake_sources=RTC_EN | ALARM):
    image = bytearray(open(guests.path("s3.bin"), "rb").read())
    struct.pack_into("<I", image, PARAM_OFFSET, wake_sources)
    return bytes(image)


def machine_for(image, **config):
    config.setdefault("timeout", 30)
    return Machine(VmConfig(serial="buffer", raw_mode="protected", **config), image, None)


class Running:
    """A machine's run on a thread of its own, for the host's side of a wake."""

    def __init__(self, machine):
        self.machine = machine
        self.outcome = {}
        self.thread = threading.Thread(target=lambda: self.outcome.update(result=machine.run()))
        self.thread.start()

    def wait_suspended(self, timeout=30):
        deadline = time.monotonic() + timeout
        while not self.machine.suspended:
            assert time.monotonic() < deadline and self.thread.is_alive(), self.machine.serial_output
            time.sleep(0.01)

    def result(self, timeout=60):
        self.thread.join(timeout)
        assert not self.thread.is_alive()
        return self.outcome["result"]


@pytest.mark.parametrize("exit_path", ["fast", "python"])
def test_the_rtc_alarm_wakes_the_guest_at_its_waking_vector(exit_path):
    with machine_for(s3_image(), exit_path=exit_path) as machine:
        result = machine.run()
        assert (result.status, machine.serial_output.decode().splitlines()) == (1, ALARM_WAKE)
        assert (machine.sleep.suspends, machine.sleep.wakes) == (1, 1)


@pytest.mark.parametrize("wake_sources", [0, RTC_EN, ALARM])
def test_a_guest_with_nothing_armed_ends_the_run_with_a_warning(wake_sources, capsys):
    with machine_for(s3_image(wake_sources)) as machine:
        result = machine.run()
        assert (result.status, result.reason) == (0, "sleep-s3")
        assert machine.serial_output.decode().splitlines() == ["s3 1", "sleeping"]
    assert "warning: the guest entered ACPI S3 sleep with no wake source armed" in capsys.readouterr().err


def test_the_cli_ends_an_unwakeable_s3_with_status_0_and_the_warning(tmp_path):
    kernel = tmp_path / "s3-none.bin"
    kernel.write_bytes(s3_image(0))
    run = subprocess.run([sys.executable, "-m", "pyvmm", "run", str(kernel), "--timeout", "30"],
                         capture_output=True, timeout=60)
    assert (run.returncode, run.stdout) == (0, b"s3 1\nsleeping\n")
    assert run.stderr.decode().startswith("warning: the guest entered ACPI S3 sleep with no wake")


@pytest.mark.parametrize("wake", ["press_power_button", "wake"])
def test_the_power_button_and_a_resume_request_wake_it(wake):
    with machine_for(s3_image(0)) as machine:
        machine.external_wake = True
        running = Running(machine)
        running.wait_suspended()
        time.sleep(0.2)
        assert machine.suspended                   # no alarm: it waits for the host
        getattr(machine, wake)()
        result = running.result()
        assert (result.status, machine.serial_output.decode().splitlines()) == (1, BUTTON_WAKE)
        assert not machine.wake()                  # the run is over: nothing to wake


def test_a_suspended_guest_stops_every_vcpu():
    with machine_for(s3_image(0), cpus=2) as machine:
        machine.external_wake = True
        running = Running(machine)
        running.wait_suspended()
        time.sleep(0.1)
        exits = machine.exit_stats().total
        time.sleep(0.5)
        assert machine.exit_stats().total == exits
        assert machine.vcpu_manager.suspended
        machine.wake()
        assert running.result().status == 1
        assert machine.vcpus[1].get_mp_state() == "uninitialized"


def test_a_suspended_guest_still_times_out_and_releases_everything():
    before = threading.active_count()
    with machine_for(s3_image(0), timeout=1.5) as machine:
        machine.external_wake = True
        started = time.monotonic()
        result = machine.run()
        assert (result.status, result.reason) == (124, "timeout")
        assert time.monotonic() - started < 10
    assert threading.active_count() == before


def test_x_firmware_waking_vector_resumes_in_protected_mode():
    with machine_for(s3_image(RTC_EN | ALARM | X_VECTOR)) as machine:
        result = machine.run()
        assert result.status == 1
        assert machine.serial_output.decode().splitlines() == (
            ["s3 1", "sleeping", "resumed", "cs 0x00000010", "cr0 0x00000011"] + ALARM_WAKE[5:])


# --- the vCPU reset itself -----------------------------------------------------------
LAPIC_TIMER_INITIAL, LAPIC_TPR = 0x380, 0x80


def block_nmis(vcpu):
    """An NMI pending and NMIs masked, as in the middle of an NMI handler."""
    events = ffi.new("struct kvm_vcpu_events *")
    events.nmi.pending, events.nmi.masked = 1, 1
    events.flags = lib.KVM_VCPUEVENT_VALID_NMI_PENDING
    ioctl(vcpu.fd, "KVM_SET_VCPU_EVENTS", events)


def test_power_on_resets_what_a_guest_changed():
    """Both vCPUs of a machine booted in long mode, then dirtied the way a
    running OS leaves them, are put back to their power-on state."""
    config = VmConfig(kernel=guests.path("long.bin"), raw_mode="long", serial="buffer", cpus=2)
    with Machine(config) as machine:
        for vcpu in machine.vcpus:
            regs = vcpu.get_regs()
            regs.rax, regs.rsp, regs.rflags = 0x1234, 0x5678, 0x202
            vcpu.set_regs(regs)
            debugregs = vcpu.get_debugregs()
            debugregs.db[0], debugregs.dr6, debugregs.dr7 = 0x1000, 0xFFFF0FF0, 0x401
            vcpu.set_debugregs(debugregs)
            vcpu.set_msrs({msr.IA32_PAT: 0x0606060606060606})
            lapic = bytearray(vcpu.get_lapic())
            struct.pack_into("<I", lapic, LAPIC_TIMER_INITIAL, 1_000_000)
            struct.pack_into("<I", lapic, LAPIC_TPR, 0x20)
            vcpu.set_lapic(lapic)
            block_nmis(vcpu)
            assert vcpu.get_vcpu_events().nmi.masked == 1
        machine.vcpus[1].set_mp_state("halted")
        vector = acpi.WakingVector("real", 0x9A5C3)
        for index, vcpu in enumerate(machine.vcpus):
            power_on.power_on(vcpu, machine.built.vcpu_boot[index], bsp=index == 0, entry=vector)

        for index, vcpu in enumerate(machine.vcpus):
            regs, sregs = vcpu.get_regs(), vcpu.get_sregs()
            assert (regs.rax, regs.rsp, regs.rflags) == (0, 0, 0x2)
            assert (sregs.cr3, sregs.cr4, sregs.efer) == (0, 0, 0)
            assert (sregs.gdt.base, sregs.gdt.limit, sregs.idt.limit) == (0, 0xFFFF, 0xFFFF)
            debugregs = vcpu.get_debugregs()
            assert (list(debugregs.db), debugregs.dr6, debugregs.dr7) == ([0, 0, 0, 0], 0xFFFF0FF0, 0x400)
            assert vcpu.get_msrs([msr.IA32_PAT]) == {msr.IA32_PAT: msr.PAT_RESET}
            events = vcpu.get_vcpu_events()
            assert (events.nmi.pending, events.nmi.masked) == (0, 0)
            lapic = vcpu.get_lapic()
            assert bytes(lapic) == machine.built.vcpu_boot[index].lapic
            assert struct.unpack_from("<I", lapic, LAPIC_TIMER_INITIAL)[0] == 0
            assert sregs.apic_base == 0xFEE00000 | 0x800 | (0x100 if index == 0 else 0)
        boot, ap = machine.vcpus
        regs, sregs = boot.get_regs(), boot.get_sregs()
        assert (sregs.cs.selector, sregs.cs.base, regs.rip) == (0x9A5C, 0x9A5C0, 0x3)
        assert [getattr(sregs, name).selector for name in ("ds", "es", "ss")] == [0, 0, 0]
        assert sregs.cr0 == 0x10 and boot.get_mp_state() == "runnable"
        regs, sregs = ap.get_regs(), ap.get_sregs()
        assert (sregs.cs.selector, sregs.cs.base, regs.rip) == (0xF000, 0xFFFF0000, 0xFFF0)
        assert sregs.cr0 == 0x60000010 and ap.get_mp_state() == "uninitialized"


def test_the_readme_example_wakes_its_guest_with_the_power_button(capsys):
    readme = pathlib.Path(__file__).resolve().parents[2] / "README.md"
    blocks = re.findall(r"```python\n(.*?)```", readme.read_text(), re.S)
    code = next(block for block in blocks if "press_power_button" in block)
    exec(compile(code, str(readme), "exec"), {})
    assert capsys.readouterr().out.splitlines()[:-1] == BUTTON_WAKE
