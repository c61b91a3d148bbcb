"""Unit tests for pyvmm.machine.sleep (ACPI S3's wake sources and wake
sequence), with the PM device and RTC as real device models and the vCPUs,
FACS and reset as recorders: no KVM."""

import threading
import time

import pytest

from pyvmm.arch.x86_64.acpi import WakingVector
from pyvmm.devices import AcpiPm, Cmos
from pyvmm.devices.context import DeviceWorker
from pyvmm.machine.sleep import SleepControl
from pyvmm.run.stop import StopSignal

MIB = 1 << 20
PM1_STS, PM1_EN, PM1_CNT = 0, 2, 4
S3 = (0x2000 | 1 << 10).to_bytes(2, "little")
VECTOR = WakingVector("real", 0x30008)


class Vcpus:
    """A VcpuManager as SleepControl sees it: suspend(), wake(prepare)."""

    def __init__(self):
        self.suspended = False
        self.calls = []

    def suspend(self):
        self.suspended = True
        self.calls.append("suspend")

    def wake(self, prepare):
        self.calls.append("wake")
        if not prepare():
            return False
        self.suspended = False
        return True


class Platform:
    def __init__(self, vector=VECTOR):
        self.stop = StopSignal()
        self.warnings = []
        self.resets = []
        self.pm = AcpiPm(on_poweroff=lambda: None, on_reset=lambda: None,
                         on_sleep=lambda state: self.sleep.enter(state))
        self.cmos = Cmos(64 * MIB)
        self.vcpus = Vcpus()
        self.sleep = SleepControl(self.pm, self.cmos, self.stop, lambda: vector,
                                  self.resets.append, warn=self.warnings.append)
        self.sleep.bind(self.vcpus)

    def outw(self, offset, value):
        self.pm.write(offset, value.to_bytes(2, "little"))

    def inw(self, offset):
        return int.from_bytes(self.pm.read(offset, 2), "little")

    def cmos_write(self, index, value):
        self.cmos.write(0, bytes([index]))
        self.cmos.write(1, bytes([value]))

    def arm_rtc_alarm(self):
        self.outw(PM1_EN, 0x0400)                # RTC_EN
        self.cmos_write(0x01, 0xC0)
        self.cmos_write(0x03, 0xC0)
        self.cmos_write(0x05, 0xC0)
        self.cmos_write(0x0B, 0x22)              # AIE

    def enter_s3(self):
        self.pm.write(PM1_CNT, S3)

    def wait_awake(self):
        deadline = time.monotonic() + 5
        while self.sleep.state != "awake":
            assert time.monotonic() < deadline, "the wake did not finish"
            time.sleep(0.005)


@pytest.fixture
def platform():
    platform = Platform()
    yield platform
    platform.sleep.close()


def test_nothing_armed_ends_the_run_with_a_warning(platform):
    platform.enter_s3()
    assert (platform.stop.result.status, platform.stop.result.reason) == (0, "sleep-s3")
    assert "no wake source armed" in platform.warnings[0]
    assert platform.vcpus.calls == [] and platform.sleep.state == "awake"


@pytest.mark.parametrize("rtc_en, aie", [(True, False), (False, True)])
def test_the_rtc_alarm_needs_rtc_en_and_aie(platform, rtc_en, aie):
    platform.outw(PM1_EN, 0x0400 if rtc_en else 0)
    platform.cmos_write(0x0B, 0x22 if aie else 0x02)
    platform.enter_s3()
    assert platform.stop.result.reason == "sleep-s3"


def test_an_armed_alarm_suspends_and_the_alarm_wakes(platform):
    platform.arm_rtc_alarm()
    platform.enter_s3()
    assert not platform.stop.requested
    assert platform.sleep.state == "suspended" and platform.vcpus.calls == ["suspend"]
    platform.sleep.rtc_alarm()                   # what the Cmos calls on its alarm interrupt
    platform.wait_awake()
    assert platform.vcpus.calls == ["suspend", "wake"] and not platform.vcpus.suspended
    assert platform.resets == [VECTOR]
    assert platform.inw(PM1_STS) == 0x8401       # WAK_STS | RTC_STS | TMR_STS
    assert platform.inw(PM1_EN) == 0
    assert not platform.cmos.alarm_armed         # the RTC was reset: AIE cleared
    assert (platform.sleep.suspends, platform.sleep.wakes) == (1, 1)


def test_an_alarm_while_awake_or_without_rtc_en_wakes_nothing(platform):
    platform.sleep.rtc_alarm()
    assert platform.sleep.state == "awake"
    platform.sleep.external_wake = True
    platform.enter_s3()
    platform.sleep.rtc_alarm()                   # RTC_EN is clear
    time.sleep(0.05)
    assert platform.sleep.state == "suspended" and platform.resets == []


def test_the_real_alarm_wakes_it(platform):
    platform.cmos = Cmos(64 * MIB, on_alarm=lambda: platform.sleep.rtc_alarm())
    platform.sleep.cmos = platform.cmos
    context = type("Context", (), {"irq": None, "worker": DeviceWorker("rtc")})()
    try:
        platform.cmos.attach(context)
        platform.arm_rtc_alarm()                 # every second ("don't care")
        started = time.monotonic()
        platform.enter_s3()
        platform.wait_awake()
        assert time.monotonic() - started < 1.5
        assert platform.inw(PM1_STS) == 0x8401
    finally:
        context.worker.close()


def test_external_wake_keeps_it_suspended_for_a_request(platform):
    platform.sleep.external_wake = True
    platform.enter_s3()
    assert platform.sleep.state == "suspended"
    assert platform.sleep.wake()
    platform.wait_awake()
    assert platform.inw(PM1_STS) == 0x8101       # WAK_STS | PWRBTN_STS (QEMU's system_wakeup)
    assert not platform.sleep.wake()             # not suspended any more


def test_the_power_button_wakes_a_suspended_machine_whatever_pwrbtn_en(platform):
    platform.sleep.external_wake = True
    platform.enter_s3()
    platform.sleep.press_power_button()
    platform.wait_awake()
    assert platform.inw(PM1_STS) == 0x8101


def test_the_power_button_while_awake_is_the_pm_devices(platform):
    platform.sleep.press_power_button()
    assert not platform.inw(PM1_STS) & 0x0100    # PWRBTN_EN clear
    platform.outw(PM1_EN, 0x0100)
    platform.sleep.press_power_button()
    assert platform.inw(PM1_STS) & 0x0100 and platform.pm.sci_level
    assert platform.vcpus.calls == [] and platform.resets == []


def test_the_pm_timer_wakes_it(platform):
    platform.outw(PM1_EN, 0x0001)                # TMR_EN
    platform.outw(PM1_STS, 0x0001)               # TMR_STS clear: the next overflow wakes
    delay = platform.pm.timer_wake_delay()
    assert 0 < delay <= (1 << 23) / 3_579_545
    platform.pm.timer_wake_delay = lambda: 0.05  # not 2.3 s
    platform.enter_s3()
    assert platform.sleep.state == "suspended"
    platform.wait_awake()
    assert platform.inw(PM1_STS) & 0x8001 == 0x8001


def test_a_wake_cancels_the_pm_timer(platform):
    platform.pm.timer_wake_delay = lambda: 0.2
    platform.enter_s3()
    platform.sleep.wake()
    platform.wait_awake()
    time.sleep(0.3)
    assert platform.resets == [VECTOR] and platform.sleep.wakes == 1


def test_no_waking_vector_ends_the_run_as_a_reset():
    platform = Platform(vector=None)
    try:
        platform.sleep.external_wake = True
        platform.enter_s3()
        platform.sleep.wake()
        deadline = time.monotonic() + 5
        while not platform.stop.requested:
            assert time.monotonic() < deadline
            time.sleep(0.005)
        assert (platform.stop.result.status, platform.stop.result.reason) == (0, "reset")
        assert "no waking vector" in platform.warnings[0]
        assert platform.resets == [] and platform.vcpus.suspended
    finally:
        platform.sleep.close()


def test_a_failing_reset_ends_the_run_as_an_internal_error(platform):
    def fail(vector):
        raise OSError("KVM_SET_SREGS")
    platform.sleep._reset_vcpus = fail
    platform.sleep.external_wake = True
    platform.enter_s3()
    platform.sleep.wake()
    deadline = time.monotonic() + 5
    while not platform.stop.requested:
        assert time.monotonic() < deadline
        time.sleep(0.005)
    assert platform.stop.result.reason == "internal-error"
    assert "KVM_SET_SREGS" in platform.stop.result.message


def test_concurrent_wake_events_wake_once(platform):
    platform.sleep.external_wake = True
    platform.enter_s3()
    barrier = threading.Barrier(8)

    def press(event):
        barrier.wait()
        event()
    events = [platform.sleep.press_power_button, platform.sleep.wake] * 4
    threads = [threading.Thread(target=press, args=(event,)) for event in events]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    platform.wait_awake()
    assert platform.resets == [VECTOR] and platform.vcpus.calls == ["suspend", "wake"]


def test_close_stops_the_thread():
    before = threading.active_count()
    platform = Platform()                  # bind() starts the controller's thread
    platform.sleep.external_wake = True
    platform.enter_s3()
    platform.sleep.wake()
    platform.wait_awake()
    platform.sleep.close()
    assert threading.active_count() == before
