"""Unit tests for pyvmm.devices.acpi_pm (ACPI PM1/PM timer block and reset
register in QEMU's q35 layout, no KVM).

Port numbers and bit values are spelled out from the ACPI specification and
QEMU (hw/acpi/core.c, hw/isa/lpc_ich9.c, the q35 FADT/DSDT) rather than
imported, except for the exported-constants test that checks them.
"""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pyvmm.arch.x86_64 import layout
from pyvmm.devices import AcpiPm, Bus
from pyvmm.devices import acpi_pm

PM_TIMER_HZ = 3_579_545


class Clock:
    def __init__(self):
        self.ns = 10_000_000_000  # an arbitrary start: the timer counts from construction

    def __call__(self):
        return self.ns


class Platform:
    """An AcpiPm on a port bus, with every callback recorded."""

    def __init__(self):
        self.events = []
        self.sci = []
        self.clock = Clock()
        self.dev = AcpiPm(
            on_poweroff=lambda: self.events.append("poweroff"),
            on_reset=lambda: self.events.append("reset"),
            on_sleep=lambda state: self.events.append(("sleep", state)),
            now=self.clock,
            set_sci=self.sci.append,
        )
        self.bus = Bus.port_io()
        self.bus.register(0x600, 12, self.dev)
        self.bus.register(0xCF9, 1, self.dev.reset_control)

    def inw(self, port):
        return int.from_bytes(self.bus.read(port, 2), "little")

    def inl(self, port):
        return int.from_bytes(self.bus.read(port, 4), "little")

    def outw(self, port, value):
        self.bus.write(port, value.to_bytes(2, "little"))

    def outb(self, port, value):
        self.bus.write(port, bytes([value]))


@pytest.fixture
def pm():
    return Platform()


def test_exported_constants_match_the_documented_layout():
    assert (layout.ACPI_PM.base, layout.ACPI_PM.length, acpi_pm.PM_LENGTH) == (0x600, 12, 12)
    assert (acpi_pm.EVT_OFFSET, acpi_pm.PM1_EVT_LEN) == (0, 4)
    assert (acpi_pm.CNT_OFFSET, acpi_pm.PM1_CNT_LEN) == (4, 2)
    assert (acpi_pm.TMR_OFFSET, acpi_pm.PM_TMR_LEN) == (8, 4)
    assert (layout.ACPI_RESET_PORT, acpi_pm.RESET_VALUE) == (0xCF9, 0x0F)
    assert (acpi_pm.SLP_TYP_S5, acpi_pm.SLP_TYP_S3, acpi_pm.SLP_TYP_S4) == (0, 1, 2)
    assert layout.SCI_IRQ == 9
    assert acpi_pm.PM_TMR_BITS == 24


# --------------------------------------------------------------- PM1_CNT


def test_pm1_cnt_reads_sci_en_set(pm):
    assert pm.inw(0x604) == 0x0001


def test_sci_en_cannot_be_cleared(pm):
    pm.outw(0x604, 0x0000)
    assert pm.inw(0x604) == 0x0001


def test_s5_powers_off(pm):
    pm.outw(0x604, 0x2000 | (0 << 10))
    assert pm.events == ["poweroff"]


def test_s3_sleeps(pm):
    pm.outw(0x604, 0x2000 | (1 << 10) | 1)
    assert pm.events == [("sleep", 3)]


def test_s4_powers_off_as_in_qemu(pm):
    pm.outw(0x604, 0x2000 | (2 << 10))
    assert pm.events == ["poweroff"]


@given(value=st.integers(0, 0xFFFF))
def test_pm1_cnt_writes(value):
    pm = Platform()
    pm.outw(0x604, value)
    sleep_type = (value >> 10) & 7
    if not value & 0x2000 or sleep_type > 2:
        expected = []
    elif sleep_type == 1:
        expected = [("sleep", 3)]
    else:
        expected = ["poweroff"]
    assert pm.events == expected
    assert pm.inw(0x604) == (value & ~0x2000) | 0x0001  # SLP_EN reads 0


def test_byte_write_to_the_high_byte_can_power_off(pm):
    pm.outb(0x605, 0x20)  # SLP_EN, SLP_TYP 0
    assert pm.events == ["poweroff"]


def test_slp_typ_without_slp_en_does_nothing(pm):
    pm.outw(0x604, 1 << 10)
    assert pm.events == []
    assert pm.inw(0x604) == 0x0401
    pm.outb(0x604, 0x01)  # a low-byte write keeps SLP_TYP
    assert pm.inw(0x604) == 0x0401


# --------------------------------------------------------------- PM timer


def test_timer_counts_at_3_579545_mhz_from_construction(pm):
    assert pm.inl(0x608) == 0
    pm.clock.ns += 1_000_000_000
    assert pm.inl(0x608) == PM_TIMER_HZ
    pm.clock.ns += 4_000_000_000  # 5 s in all: the 24-bit counter wrapped
    assert pm.inl(0x608) == (5 * PM_TIMER_HZ) & 0xFFFFFF


@given(elapsed_ns=st.integers(0, 10**13), offset=st.integers(0, 3))
def test_timer_byte_lanes(elapsed_ns, offset):
    pm = Platform()
    pm.clock.ns += elapsed_ns
    ticks = (elapsed_ns * PM_TIMER_HZ // 1_000_000_000) & 0xFFFFFF
    assert pm.bus.read(0x608 + offset, 1)[0] == (ticks >> (8 * offset)) & 0xFF


def test_timer_ignores_writes(pm):
    pm.clock.ns += 1_000_000
    before = pm.inl(0x608)
    pm.bus.write(0x608, b"\0\0\0\0")
    assert pm.inl(0x608) == before


def test_timer_status_follows_bit_23(pm):
    assert pm.inw(0x600) & 0x0001  # set from the start, as QEMU
    pm.outw(0x600, 0x0001)  # write 1 to clear
    assert pm.inw(0x600) & 0x0001 == 0
    ns_per_half_period = (1 << 23) * 1_000_000_000 // PM_TIMER_HZ
    pm.clock.ns += ns_per_half_period - 1_000_000
    assert pm.inw(0x600) & 0x0001 == 0
    pm.clock.ns += 2_000_000
    assert pm.inw(0x600) & 0x0001


# --------------------------------------------------------- PM1 status/enable


def test_pm1_enable_reads_back(pm):
    pm.outw(0x602, 0x0521)
    assert pm.inw(0x602) == 0x0521
    assert pm.inl(0x600) >> 16 == 0x0521


def test_power_button_needs_its_enable_bit(pm):
    pm.dev.press_power_button()
    assert pm.inw(0x600) & 0x0100 == 0
    assert pm.sci == []
    pm.outw(0x602, 0x0100)
    pm.dev.press_power_button()
    assert pm.inw(0x600) & 0x0100
    assert pm.sci == [True]
    assert pm.dev.sci_level
    pm.outw(0x600, 0x0100)  # the OS acknowledges
    assert pm.inw(0x600) & 0x0100 == 0
    assert pm.sci == [True, False]


def test_writing_zero_to_status_clears_nothing(pm):
    pm.outw(0x602, 0x0100)
    pm.dev.press_power_button()
    pm.outw(0x600, 0x0000)
    assert pm.inw(0x600) & 0x0100


def test_timer_status_raises_sci_when_enabled(pm):
    pm.outw(0x602, 0x0001)  # TMR_EN, TMR_STS is already set
    assert pm.sci == [True]


# ------------------------------------------------------------- S3 wake


def test_rtc_wake_follows_rtc_en(pm):
    assert not pm.dev.rtc_wake_enabled
    pm.outw(0x602, 0x0400)
    assert pm.dev.rtc_wake_enabled
    pm.outw(0x602, 0x0000)
    assert not pm.dev.rtc_wake_enabled


@pytest.mark.parametrize("events, status", [
    (0x0400, 0x8401),     # RTC alarm: WAK_STS | RTC_STS, TMR_STS due again after the reset
    (0x0100, 0x8101),     # power button or a resume request: WAK_STS | PWRBTN_STS
    (0x0001, 0x8001),     # PM timer
    (0x0000, 0x8001),
    (0xFEFE, 0x8401),     # only wake events reach PM1_STS
])
def test_wake_resets_the_block_then_reports_the_event(pm, events, status):
    pm.outw(0x602, 0x0521)
    pm.outw(0x600, 0xFFFF)
    pm.outw(0x604, 0x0401)    # SLP_TYP 1, not yet SLP_EN
    pm.dev.wake(events)
    assert pm.inw(0x600) == status
    assert pm.inw(0x602) == 0x0000              # PM1_EN as after a reset (QEMU)
    assert pm.inw(0x604) == 0x0001              # SLP_TYP cleared, SCI_EN as always
    pm.outw(0x600, 0x8000)                      # WAK_STS is write-1-to-clear
    assert pm.inw(0x600) == status & ~0x8000


def test_wake_lowers_sci(pm):
    pm.outw(0x602, 0x0001)
    assert pm.sci == [True]
    pm.dev.wake(0x0400)
    assert pm.sci == [True, False]


def test_timer_wake_needs_tmr_en_and_tmr_sts_clear(pm):
    assert pm.dev.timer_wake_delay() is None     # TMR_EN clear
    pm.outw(0x602, 0x0001)
    assert pm.dev.timer_wake_delay() is None     # TMR_STS still set
    pm.outw(0x600, 0x0001)
    half_period = (1 << 23) / PM_TIMER_HZ       # 2.34 s until bit 23 toggles
    assert pm.dev.timer_wake_delay() == pytest.approx(half_period, abs=1e-6)
    pm.clock.ns += 1_000_000_000
    assert pm.dev.timer_wake_delay() == pytest.approx(half_period - 1, abs=1e-6)
    pm.clock.ns += 2_000_000_000
    assert pm.dev.timer_wake_delay() is None     # overflowed: TMR_STS set again


def test_unassigned_offsets_read_all_ones(pm):
    assert pm.bus.read(0x606, 2) == b"\xff\xff"


def test_works_without_sci_callback():
    events = []
    dev = AcpiPm(lambda: events.append("off"), lambda: None, lambda state: None, now=Clock())
    dev.write(2, b"\x00\x01")
    dev.press_power_button()
    assert dev.sci_level
    dev.write(5, b"\x20")
    assert events == ["off"]


# ----------------------------------------------------------- reset control


@pytest.mark.parametrize("value", [0x06, 0x0F, 0x04, 0xFF])
def test_reset_register_resets_when_rst_cpu_is_set(pm, value):
    pm.outb(0xCF9, value)
    assert pm.events == ["reset"]


@given(value=st.integers(0, 255).filter(lambda v: not v & 0x04))
def test_reset_register_keeps_bits_1_and_3(value):
    pm = Platform()
    pm.outb(0xCF9, value)
    assert pm.events == []
    assert pm.bus.read(0xCF9, 1)[0] == value & 0x0A


def test_linux_reboot_pci_sequence(pm):
    cf9 = pm.bus.read(0xCF9, 1)[0] & ~0x0E
    pm.outb(0xCF9, cf9 | 0x02)
    assert pm.events == []
    pm.outb(0xCF9, cf9 | 0x0E)
    assert pm.events == ["reset"]


@st.composite
def accesses(draw):
    port, length = draw(st.sampled_from([(0x600, 12), (0xCF9, 1)]))
    size = draw(st.sampled_from([s for s in (1, 2, 4) if s <= length]))
    offset = draw(st.integers(0, length - size))
    data = draw(st.binary(min_size=size, max_size=size)) if draw(st.booleans()) else None
    return port + offset, size, data, draw(st.integers(0, 10**10))


@given(st.lists(accesses(), max_size=80))
def test_random_accesses_never_raise_and_reads_have_the_right_size(sequence):
    pm = Platform()
    for port, size, data, elapsed in sequence:
        pm.clock.ns += elapsed
        if data is None:
            assert len(pm.bus.read(port, size)) == size
        else:
            pm.bus.write(port, data)
        assert pm.inw(0x604) & 0x2001 == 0x0001  # SCI_EN always on, SLP_EN never read back
    assert pm.bus.unhandled_reads == pm.bus.unhandled_writes == 0
    assert all(event in ("poweroff", "reset", ("sleep", 3)) for event in pm.events)
