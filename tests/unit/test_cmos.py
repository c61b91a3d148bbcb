"""Unit tests for pyvmm.devices.cmos (MC146818 RTC + CMOS RAM, no KVM).

Register numbers and values are spelled out from the MC146818 datasheet,
QEMU's hw/rtc/mc146818rtc.c and pc_cmos_init rather than imported.
"""

import calendar
import datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pyvmm.devices import Bus, Cmos
from pyvmm.devices.cmos import alarm_matches, next_alarm

MIB = 1 << 20
GIB = 1 << 30
# 2024-02-29 13:45:07 UTC, a Thursday (day of week 5 with Sunday = 1).
LEAP_DAY = calendar.timegm((2024, 2, 29, 13, 45, 7))


class Clock:
    def __init__(self, t):
        self.t = t

    def __call__(self):
        return self.t


class Rtc:
    def __init__(self, ram_size=64 * MIB, cpus=1, t=LEAP_DAY + 0.25):
        self.clock = Clock(t)
        self.dev = Cmos(ram_size, cpus=cpus, now=self.clock)

    def read(self, index):
        self.dev.write(0, bytes([index]))
        return self.dev.read(1, 1)[0]

    def write(self, index, value):
        self.dev.write(0, bytes([index]))
        self.dev.write(1, bytes([value]))

    def time_registers(self):
        return [self.read(i) for i in (0x00, 0x02, 0x04, 0x06, 0x07, 0x08, 0x09, 0x32)]

    def u16(self, index):
        return self.read(index) | self.read(index + 1) << 8


def bcd(value):
    return (value // 10) << 4 | value % 10


# ------------------------------------------------------------ memory sizes


@pytest.mark.parametrize(
    "ram_size,base,extended,above_16m,above_4g",
    [
        (512 * 1024, 512, 0, 0, 0),
        (2 * MIB, 640, 1024, 0, 0),
        (16 * MIB, 640, 15 * 1024, 0, 0),
        (64 * MIB, 640, 63 * 1024, 48 * 16, 0),
        (512 * MIB, 640, 0xFFFF, 496 * 16, 0),
        (3 * GIB, 640, 0xFFFF, (3 * GIB - 16 * MIB) // 65536, 0),
        (8 * GIB, 640, 0xFFFF, (3 * GIB - 16 * MIB) // 65536, 5 * GIB // 65536),
    ],
)
def test_memory_size_bytes_follow_pc_cmos_init(ram_size, base, extended, above_16m, above_4g):
    rtc = Rtc(ram_size=ram_size)
    assert rtc.u16(0x15) == base
    assert rtc.u16(0x17) == extended
    assert rtc.u16(0x30) == extended
    assert rtc.u16(0x34) == above_16m
    assert rtc.read(0x5B) | rtc.read(0x5C) << 8 | rtc.read(0x5D) << 16 == above_4g


@given(ram_size=st.integers(0, 1 << 40))
def test_memory_size_bytes_are_consistent(ram_size):
    rtc = Rtc(ram_size=ram_size)
    below_4g = min(ram_size, 3 * GIB)
    assert rtc.u16(0x15) == min(below_4g // 1024, 640)
    assert rtc.u16(0x17) == rtc.u16(0x30) <= 0xFFFF
    if below_4g <= 16 * MIB:
        assert rtc.u16(0x34) == 0
    else:
        assert 0 <= below_4g - 16 * MIB - rtc.u16(0x34) * 65536 < 65536
    high = rtc.read(0x5B) | rtc.read(0x5C) << 8 | rtc.read(0x5D) << 16
    assert high == ((ram_size - below_4g) // 65536) & 0xFFFFFF


@pytest.mark.parametrize("cpus", [1, 2, 8, 64])
def test_cpu_count_byte(cpus):
    assert Rtc(cpus=cpus).read(0x5F) == cpus - 1


def test_low_ram_limit_is_configurable():
    dev = Cmos(4 * GIB, now=Clock(LEAP_DAY), low_ram_limit=2 * GIB)
    raw = dev.snapshot()
    assert raw[0x5B] | raw[0x5C] << 8 | raw[0x5D] << 16 == 2 * GIB // 65536


# --------------------------------------------------------------- the clock


def test_time_registers_in_bcd_24h():
    rtc = Rtc()
    assert rtc.time_registers() == [0x07, 0x45, 0x13, 0x05, 0x29, 0x02, 0x24, 0x20]


def test_binary_mode_via_register_b_dm_bit():
    rtc = Rtc()
    rtc.write(0x0B, 0x06)
    assert rtc.time_registers() == [7, 45, 13, 5, 29, 2, 24, 20]


@pytest.mark.parametrize("hour,register", [(0, 0x12), (1, 0x01), (11, 0x11), (12, 0x92), (13, 0x81), (23, 0x91)])
def test_12_hour_mode(hour, register):
    rtc = Rtc(t=calendar.timegm((2024, 1, 1, hour, 0, 0)))
    rtc.write(0x0B, 0x00)
    assert rtc.read(0x04) == register


@given(
    t=st.integers(0, calendar.timegm((2199, 12, 31, 23, 59, 59))),
    binary=st.booleans(),
)
def test_registers_match_the_host_calendar(t, binary):
    rtc = Rtc(t=t + 0.5)
    if binary:
        rtc.write(0x0B, 0x06)
    d = datetime.datetime.fromtimestamp(t, datetime.timezone.utc)
    expected = [d.second, d.minute, d.hour, d.isoweekday() % 7 + 1, d.day, d.month, d.year % 100, d.year // 100]
    if not binary:
        expected = [bcd(v) for v in expected]
    assert rtc.time_registers() == expected


def test_clock_advances_with_now():
    rtc = Rtc()
    rtc.clock.t += 60 * 60 * 24 + 3  # one day and three seconds later
    assert rtc.time_registers() == [0x10, 0x45, 0x13, 0x06, 0x01, 0x03, 0x24, 0x20]


def test_set_mode_freezes_registers_and_clearing_it_sets_the_clock():
    rtc = Rtc()
    rtc.write(0x0B, 0x82)  # SET, 24h, BCD
    rtc.clock.t += 10
    assert rtc.read(0x00) == 0x07  # frozen
    for index, value in ((0x00, 0x30), (0x02, 0x59), (0x04, 0x23), (0x07, 0x31), (0x08, 0x12), (0x09, 0x99), (0x32, 0x19)):
        rtc.write(index, value)
    rtc.write(0x0B, 0x02)  # leave set mode
    assert rtc.time_registers()[:3] == [0x30, 0x59, 0x23]
    rtc.clock.t += 30  # the new time runs: 1999-12-31 23:59:30 + 30 s
    assert rtc.time_registers() == [0x00, 0x00, 0x00, 0x07, 0x01, 0x01, 0x00, 0x20]


def test_writing_a_time_register_while_running_moves_the_clock():
    rtc = Rtc()
    rtc.write(0x02, 0x10)  # minutes := 10
    assert rtc.time_registers()[:3] == [0x07, 0x10, 0x13]
    rtc.clock.t += 5
    assert rtc.read(0x00) == 0x12


def test_divider_reset_stops_the_clock():
    rtc = Rtc()
    rtc.write(0x0A, 0x66)  # divider chain in reset
    rtc.clock.t += 100
    assert rtc.read(0x00) == 0x07
    rtc.write(0x0A, 0x26)  # running again from the frozen time
    rtc.clock.t += 1
    assert rtc.read(0x00) == 0x08


def test_ibm_ps2_century_alias():
    rtc = Rtc()
    assert rtc.read(0x37) == 0x20


# ------------------------------------------------------- status registers


def test_status_register_defaults():
    rtc = Rtc()
    assert rtc.read(0x0A) == 0x26
    assert rtc.read(0x0B) == 0x02
    assert rtc.read(0x0C) == 0x00
    assert rtc.read(0x0D) == 0x80


def test_uip_only_in_the_last_244us_of_a_second():
    rtc = Rtc(t=LEAP_DAY + 0.9999)
    assert rtc.read(0x0A) == 0xA6
    rtc.clock.t = LEAP_DAY + 1.0001
    assert rtc.read(0x0A) == 0x26


def test_uip_is_read_only():
    rtc = Rtc()
    rtc.write(0x0A, 0xA6)
    assert rtc.read(0x0A) == 0x26


def test_setting_set_clears_uie():
    rtc = Rtc()
    rtc.write(0x0B, 0x92)
    assert rtc.read(0x0B) == 0x82


def test_register_c_reports_update_ended_once_and_read_clears():
    rtc = Rtc()
    assert rtc.read(0x0C) == 0x00
    rtc.clock.t += 1
    assert rtc.read(0x0C) == 0x10
    assert rtc.read(0x0C) == 0x00
    rtc.write(0x0B, 0x12)  # UIE: IRQF accompanies UF
    rtc.clock.t += 1
    assert rtc.read(0x0C) == 0x90
    assert rtc.read(0x0C) == 0x00


def test_registers_c_and_d_ignore_writes():
    rtc = Rtc()
    rtc.write(0x0C, 0xFF)
    rtc.write(0x0D, 0x00)
    assert rtc.read(0x0C) == 0x00
    assert rtc.read(0x0D) == 0x80


# ------------------------------------------------------------ ports, RAM


def test_index_port_reads_0xff_and_keeps_nmi_bit():
    rtc = Rtc()
    rtc.dev.write(0, b"\x8f")
    assert rtc.dev.nmi_disabled
    assert rtc.dev.read(0, 1) == b"\xff"
    rtc.dev.write(1, b"\x42")  # went to index 0x0f: bit 7 is not part of the index
    assert rtc.read(0x0F) == 0x42
    assert not rtc.dev.nmi_disabled


RAM_INDEXES = [i for i in range(0x0E, 0x80) if i not in (0x32, 0x37)]


@given(index=st.sampled_from(RAM_INDEXES), value=st.integers(0, 255))
def test_cmos_ram_bytes_read_back(index, value):
    rtc = Rtc()
    rtc.write(index, value)
    assert rtc.read(index) == value


@given(index=st.sampled_from([0x01, 0x03, 0x05]), value=st.integers(0, 255))
def test_alarm_registers_are_storage(index, value):
    rtc = Rtc()
    rtc.write(index, value)
    assert rtc.read(index) == value


def test_word_write_to_0x70_sets_index_then_data():
    rtc = Rtc()
    rtc.dev.write(0, bytes([0x40, 0x5A]))
    assert rtc.read(0x40) == 0x5A
    rtc.dev.write(0, b"\x0d")
    assert rtc.dev.read(0, 2) == b"\xff\x80"


@st.composite
def port_accesses(draw):
    size = draw(st.sampled_from([1, 2]))
    offset = draw(st.integers(0, 2 - size))
    data = draw(st.binary(min_size=size, max_size=size)) if draw(st.booleans()) else None
    return offset, size, data


@given(
    accesses=st.lists(port_accesses(), max_size=80),
    times=st.lists(st.floats(0, 4e9, allow_nan=False), min_size=1, max_size=80),
)
def test_random_accesses_never_raise_and_reads_have_the_right_size(accesses, times):
    clock = Clock(times[0])
    dev = Cmos(1 * GIB, cpus=4, now=clock)
    bus = Bus.port_io()
    bus.register(0x70, 2, dev)
    for step, (offset, size, data) in enumerate(accesses):
        clock.t = times[step % len(times)]
        if data is None:
            assert len(bus.read(0x70 + offset, size)) == size
        else:
            bus.write(0x70 + offset, data)
    assert bus.read(0x70, 4) == b"\xff" * 4  # straddles the range: unhandled
    assert len(dev.snapshot()) == 128


# ------------------------------------------------------------------ alarm
#
# The alarm matches when each alarm byte (0x05 hours, 0x03 minutes, 0x01
# seconds) equals the time register as the clock encodes it, or is a "don't
# care" byte 0xC0-0xFF (MC146818 datasheet; QEMU rtc_from_bcd).

FORMATS = {  # register B: hour and number format
    "bcd 24h": 0x02, "bcd 12h": 0x00, "binary 24h": 0x06, "binary 12h": 0x04,
}
_ENCODED_DAYS = {}


def encoded_time_of_day(reg_b):
    """[(hours, minutes, seconds) registers] for each second of a day, spelled
    out from the datasheet's formats (independently of the device)."""
    if reg_b not in _ENCODED_DAYS:
        def number(value):
            return value if reg_b & 0x04 else bcd(value)

        def hour(h):
            if reg_b & 0x02:
                return number(h)
            return number(h % 12 or 12) | (0x80 if h >= 12 else 0)
        _ENCODED_DAYS[reg_b] = [(hour(t // 3600), number(t // 60 % 60), number(t % 60))
                                for t in range(86400)]
    return _ENCODED_DAYS[reg_b]


def first_match_by_brute_force(after, alarm, reg_b):
    day = encoded_time_of_day(reg_b)
    for t in range(after + 1, after + 86401):
        if all(a >= 0xC0 or a == r for a, r in zip(alarm, day[t % 86400])):
            return t
    return None


@st.composite
def alarm_bytes(draw, limit):
    """A value the field takes (encoded later), don't care, or any byte."""
    kind = draw(st.sampled_from(["value", "dont_care", "any"]))
    if kind == "dont_care":
        return ("raw", draw(st.integers(0xC0, 0xFF)))
    if kind == "any":
        return ("raw", draw(st.integers(0, 0xFF)))
    return ("value", draw(st.integers(0, limit - 1)))


def encode_field(spec, reg_b, field):
    kind, value = spec
    if kind == "raw":
        return value
    hours, minutes, seconds = encoded_time_of_day(reg_b)[
        {"hours": value * 3600, "minutes": value * 60, "seconds": value}[field]]
    return {"hours": hours, "minutes": minutes, "seconds": seconds}[field]


@settings(max_examples=40, deadline=None)
@given(after=st.integers(0, 4_000_000_000), reg_b=st.sampled_from(sorted(FORMATS.values())),
       hours=alarm_bytes(24), minutes=alarm_bytes(60), seconds=alarm_bytes(60))
def test_next_alarm_is_the_first_matching_second(after, reg_b, hours, minutes, seconds):
    alarm = (encode_field(hours, reg_b, "hours"), encode_field(minutes, reg_b, "minutes"),
             encode_field(seconds, reg_b, "seconds"))
    assert next_alarm(after, alarm, reg_b) == first_match_by_brute_force(after, alarm, reg_b)


@given(byte=st.integers(0xC0, 0xFF), register=st.integers(0, 0xFF))
def test_dont_care_bytes_match_anything(byte, register):
    assert alarm_matches(byte, register)


@given(byte=st.integers(0, 0xBF), register=st.integers(0, 0xFF))
def test_other_bytes_match_only_themselves(byte, register):
    assert alarm_matches(byte, register) == (byte == register)


class FakeWorker:
    """call_later() records the timer; fire() runs it as the worker would."""

    def __init__(self):
        self.timers = []

    def call_later(self, delay, fn, *args):
        timer = type("Timer", (), {"cancelled": False})()
        timer.cancel = lambda: setattr(timer, "cancelled", True)
        timer.delay, timer.fn, timer.args = delay, fn, args
        self.timers.append(timer)
        return timer

    @property
    def pending(self):
        live = [timer for timer in self.timers if not timer.cancelled]
        assert len(live) <= 1, "the device keeps one timer"
        return live[0] if live else None

    def fire(self):
        timer = self.pending
        timer.cancelled = True
        timer.fn(*timer.args)


class Line:
    def __init__(self):
        self.level = False
        self.changes = []

    def set(self, level):
        self.level = level
        self.changes.append(level)


class AlarmRtc(Rtc):
    """An Rtc attached to a context: IRQ 8 is a Line, the worker a FakeWorker."""

    def __init__(self, t=LEAP_DAY + 0.25, **kwargs):
        self.alarms = 0
        self.clock = Clock(t)
        self.dev = Cmos(64 * MIB, now=self.clock, on_alarm=self.count_alarm, **kwargs)
        self.worker, self.line = FakeWorker(), Line()
        self.dev.attach(type("Context", (), {"irq": self.line, "worker": self.worker})())

    def count_alarm(self):
        self.alarms += 1

    def arm(self, hours, minutes, seconds, reg_b):
        self.write(0x0B, reg_b & ~0x20)
        self.read(0x0C)
        for index, value in ((0x05, hours), (0x03, minutes), (0x01, seconds)):
            self.write(index, value)
        self.write(0x0B, reg_b)


# LEAP_DAY is 13:45:07 UTC.
@pytest.mark.parametrize("reg_b, hours, minutes, seconds", [
    (0x22, 0x13, 0x45, 0x09),     # BCD, 24-hour
    (0x26, 13, 45, 9),            # binary, 24-hour
    (0x20, 0x81, 0x45, 0x09),     # BCD, 12-hour: 1 PM
    (0x24, 0x81, 45, 9),          # binary, 12-hour
    (0x22, 0xFF, 0xC0, 0x09),     # don't care hours and minutes
    (0x26, 0xC3, 0xC0, 9),
])
def test_the_alarm_interrupts_at_the_matching_second(reg_b, hours, minutes, seconds):
    rtc = AlarmRtc()
    rtc.arm(hours, minutes, seconds, reg_b)
    assert rtc.dev.alarm_armed
    timer = rtc.worker.pending
    assert timer.delay == pytest.approx(1.75)       # 13:45:09 from 13:45:07.25
    rtc.clock.t = LEAP_DAY + 1.5                    # early: nothing yet, the timer comes back
    rtc.worker.fire()
    assert (rtc.line.level, rtc.alarms) == (False, 0)
    assert rtc.worker.pending.delay == pytest.approx(0.5)
    rtc.clock.t = LEAP_DAY + 2.001
    rtc.worker.fire()
    assert (rtc.line.level, rtc.alarms) == (True, 1)
    assert rtc.read(0x0C) == 0x80 | 0x20 | 0x10     # IRQF, AF, UF
    assert not rtc.line.level
    assert rtc.read(0x0C) == 0x00


def test_all_dont_care_fires_at_every_second():
    rtc = AlarmRtc()
    rtc.arm(0xC0, 0xC0, 0xC0, 0x22)
    for second in range(1, 4):
        assert rtc.worker.pending.delay == pytest.approx(1 - 0.25 if second == 1 else 1.0, abs=1e-6)
        rtc.clock.t = LEAP_DAY + second
        rtc.worker.fire()
        assert rtc.alarms == second
        assert rtc.read(0x0C) == 0xB0


def test_an_alarm_a_day_away_waits_a_day():
    rtc = AlarmRtc()
    rtc.arm(0x13, 0x45, 0x07, 0x22)                 # the current second: next time tomorrow
    assert rtc.worker.pending.delay == pytest.approx(86400 - 0.25)


def test_without_aie_the_alarm_only_sets_af():
    rtc = AlarmRtc()
    rtc.arm(0x13, 0x45, 0x09, 0x02)
    assert rtc.worker.pending is None and not rtc.dev.alarm_armed
    rtc.clock.t = LEAP_DAY + 2.5
    assert rtc.read(0x0C) == 0x30                   # AF and UF, no IRQF
    assert (rtc.line.changes.count(True), rtc.alarms) == (0, 0)


def test_a_missed_alarm_second_is_not_reported():
    rtc = AlarmRtc()
    rtc.arm(0x13, 0x45, 0x09, 0x02)
    rtc.clock.t = LEAP_DAY + 1.5
    assert rtc.read(0x0C) == 0x10                   # 13:45:08: UF only
    assert rtc.read(0x0C) == 0x00


def test_enabling_aie_with_af_set_interrupts_at_once():
    rtc = AlarmRtc()
    rtc.arm(0x13, 0x45, 0x09, 0x02)
    rtc.clock.t = LEAP_DAY + 2.5
    rtc.write(0x0B, 0x22)                           # AF is already set (QEMU raises then)
    assert rtc.line.level
    assert rtc.alarms == 0                          # an interrupt, not an alarm event
    assert not rtc.dev.alarm_armed                  # AF stays set until C is read
    rtc.write(0x0B, 0x02)                           # disabling it lowers the line
    assert not rtc.line.level


@pytest.mark.parametrize("seconds", [0x60, 0x5A, 0xBF])
def test_an_alarm_the_clock_never_shows_never_fires(seconds):
    rtc = AlarmRtc()
    rtc.arm(0xC0, 0xC0, seconds, 0x22)
    assert not rtc.dev.alarm_armed
    assert rtc.worker.pending is None
    rtc.clock.t += 86400 * 2
    assert rtc.read(0x0C) == 0x10


def test_a_stopped_clock_has_no_alarm():
    rtc = AlarmRtc()
    rtc.arm(0xC0, 0xC0, 0xC0, 0xA2)                 # SET: the clock is stopped
    assert not rtc.dev.alarm_armed
    assert rtc.worker.pending is None


def test_update_interrupt_every_second():
    rtc = AlarmRtc()
    rtc.write(0x0B, 0x12)                           # UIE
    rtc.clock.t = LEAP_DAY + 1.0
    rtc.worker.fire()
    assert rtc.line.level and rtc.alarms == 0
    assert rtc.worker.pending is None               # UF still set: nothing new can come
    assert rtc.read(0x0C) == 0x90
    assert rtc.worker.pending.delay == pytest.approx(1.0)


def test_setting_the_clock_moves_the_alarm():
    rtc = AlarmRtc()
    rtc.arm(0x14, 0x00, 0x00, 0x22)                 # 14:00:00, 14m53s away
    assert rtc.worker.pending.delay == pytest.approx(14 * 60 + 52.75)
    rtc.write(0x02, 0x59)                           # minutes := 59: 13:59:07
    assert rtc.worker.pending.delay == pytest.approx(52.75)


def test_reset_clears_the_alarm_enable_and_the_line():
    rtc = AlarmRtc()
    rtc.write(0x0F, 0xFE)
    rtc.arm(0xC0, 0xC0, 0xC0, 0x7A)                 # PIE, AIE, UIE, SQWE, 24-hour
    rtc.clock.t = LEAP_DAY + 1
    rtc.worker.fire()
    assert rtc.line.level
    rtc.dev.reset()
    assert not rtc.line.level
    assert rtc.read(0x0B) == 0x12                   # UIE stays (QEMU)
    assert rtc.read(0x0C) == 0x00
    assert rtc.read(0x0F) == 0xFE                   # RAM and clock stay
    assert not rtc.dev.alarm_armed


def test_register_writes_keep_the_alarm_timer():
    rtc = AlarmRtc()
    rtc.arm(0x14, 0x00, 0x00, 0x22)
    timer = rtc.worker.pending
    for value in range(1000):
        rtc.write(0x40, value & 0xFF)            # RAM
        rtc.write(0x0B, 0x22)                    # B again, unchanged
        rtc.write(0x01, 0x00)                    # the same alarm
    assert rtc.worker.pending is timer and len(rtc.worker.timers) == 1
