"""ACPI fixed-hardware registers (PM1 event/control, PM timer) and the
chipset reset register, laid out as QEMU's q35 machine (ICH9 LPC) has them.

The block is PM_LENGTH ports, registered where the platform's address map
(pyvmm/arch/x86_64/layout.py, ACPI_PM) puts it; the FADT points at it from
there. Offsets and values the ACPI table builder needs are exported:

    EVT_OFFSET    +0, 4 bytes          PM1a_EVT_BLK: PM1_STS (2) then PM1_EN (2)
    CNT_OFFSET    +4, 2 bytes          PM1a_CNT_BLK
    TMR_OFFSET    +8, 4 bytes          PM_TMR_BLK: 24-bit counter at 3.579545 MHz
                                       (leave FADT flag TMR_VAL_EXT clear)
    RESET_VALUE   0x0f                 the FADT's RESET_VALUE, as QEMU's q35 FADT
    SLP_TYP_S3    1, SLP_TYP_S4 2, SLP_TYP_S5 0   the DSDT's \\_S3, \\_S4, \\_S5
                                       first package elements, as in QEMU's DSDT

There is no PM1b block, no GPE0 block (FADT GPE0_BLK = 0) and no SMI
command port: SCI_EN in PM1_CNT always reads 1, so the FADT can set
SMI_CMD = 0 and the OS finds ACPI already enabled.

Behaviour (QEMU hw/acpi/core.c, hw/isa/lpc_ich9.c):
* PM1_STS bits are write-1-to-clear.  TMR_STS (bit 0) is set whenever bit 23
  of the timer has toggled since it was last cleared (QEMU's overflow_time);
  PWRBTN_STS (bit 8) is set by `press_power_button()` if PWRBTN_EN is set.
  RTC_STS (bit 10) and WAK_STS (bit 15) are set only by `wake()`.
* PM1_EN is read/write.  The SCI level (optional `set_sci(level)`) is
  (PM1_STS & PM1_EN) over TMR, GBL, PWRBTN and RTC, as acpi_update_sci.
  RTC_EN (bit 10) makes the RTC alarm a wake source (`rtc_wake_enabled`);
  TMR_EN (bit 0) with TMR_STS clear makes the next timer overflow one
  (`timer_wake_delay()`), as in QEMU.  Deviation: without timers, a timer
  overflow raises SCI only when the guest next touches PM1_STS/PM1_EN.
* PM1_CNT: writing SLP_EN (bit 13) with SLP_TYP (bits 10-12) = 0 powers off
  (`on_poweroff()`), = 1 suspends to RAM (`on_sleep(3)`), = 2 hibernates,
  which QEMU ends with a power-off, so `on_poweroff()` too; other types are
  ignored.  SLP_EN reads 0; the other bits read back as written.
* Waking from S3 (`wake(events)`, called by the machine) resets the block
  as QEMU's machine reset on wake does (PM1_STS, PM1_EN and PM1_CNT to their
  reset values, TMR_STS due again) and then sets WAK_STS with the event's
  status bits: RTC_STS for the RTC alarm, TMR_STS for the PM timer,
  PWRBTN_STS for the power button and for a plain resume request (as QEMU's
  system_wakeup).
* PM_TMR counts from 0 at construction, from `now()` in nanoseconds; writes
  are ignored.
* The reset register (ICH9 RST_CNT at 0xcf9) is the separate device
  `reset_control`: a write with bit 2 (RST_CPU) set calls `on_reset()`
  (0x06 and 0x0f both do); otherwise bits 1 and 3 are kept and read back.
  0xcf9 lies inside the PCI configuration range 0xcf8-0xcff, so either hand
  `reset_control` to PciConfigAbsent or register it alone at 0xcf9, length 1.
* Accesses of any size act on the byte lanes of these little-endian
  registers.  Deviation: QEMU's narrow reads of the upper byte of PM1_STS or
  PM1_EN return 0, and any narrow PM_TMR read returns the timer's low byte;
  we return the addressed byte.  A byte write to PM1_CNT's low byte keeps
  the high byte here (QEMU zeroes it).  Offsets 6-7 of the block are
  unassigned and read 0xff.
"""

from __future__ import annotations

import threading
import time
from typing import Callable, Optional

from .state import StateReader

PM1_EVT_LEN = 4
PM1_CNT_LEN = 2
PM_TMR_LEN = 4
PM_LENGTH = 0x0C
PM_TMR_FREQUENCY = 3_579_545
PM_TMR_BITS = 24
RESET_VALUE = 0x0F
SLP_TYP_S5 = 0
SLP_TYP_S3 = 1
SLP_TYP_S4 = 2

# Offsets inside the block.
EVT_OFFSET = STS_OFFSET = 0
EN_OFFSET = 2
CNT_OFFSET = 4
TMR_OFFSET = 8

# PM1_STS / PM1_EN bits.
TMR_STS = 0x0001
GBL_STS = 0x0020
PWRBTN_STS = 0x0100
RTC_STS = 0x0400
WAK_STS = 0x8000
SCI_EVENTS = TMR_STS | GBL_STS | PWRBTN_STS | RTC_STS  # QEMU's ACPI_BITMASK_PM1_COMMON_ENABLED
TMR_EN = TMR_STS  # PM1_EN bits sit at their status bits
PWRBTN_EN = PWRBTN_STS
RTC_EN = RTC_STS
WAKE_EVENTS = TMR_STS | PWRBTN_STS | RTC_STS

# PM1_CNT bits.
SCI_EN = 0x0001
SLP_TYP_SHIFT = 10
SLP_TYP_MASK = 0x7 << SLP_TYP_SHIFT
SLP_EN = 0x2000

# Reset control register bits (ICH9 RST_CNT).
RST_CPU = 0x04
RST_KEEP = 0x0A  # SYS_RST (bit 1) and FULL_RST (bit 3) read back

TIMER_HALF_PERIOD = 1 << (PM_TMR_BITS - 1)  # ticks between toggles of bit 23
NANOSECONDS = 1_000_000_000
MAX_TICKS = 1 << 62          # centuries of the 3.58 MHz clock


class AcpiPm:
    def __init__(
        self,
        on_poweroff: Callable[[], None],
        on_reset: Callable[[], None],
        on_sleep: Callable[[int], None],
        now: Callable[[], int] = time.monotonic_ns,
        set_sci: Optional[Callable[[bool], None]] = None,
    ) -> None:
        self._on_poweroff = on_poweroff
        self._on_sleep = on_sleep
        self._set_sci = set_sci
        self._now = now
        self._start = now()
        self._lock = threading.Lock()
        self._sts = 0
        self._en = 0
        self._cnt = SCI_EN
        self._sci_level = False
        self._timer_overflow_tick = 0  # QEMU's overflow_time: TMR_STS is set from the start
        self.reset_control = ResetControl(on_reset)

    # ------------------------------------------------------- device contract

    def read(self, offset: int, size: int) -> bytes:
        with self._lock:
            block = self._register_image()
        data = block[offset : offset + size]
        return data + b"\xff" * (size - len(data))

    def write(self, offset: int, data: bytes) -> None:
        actions: list[Callable[[], None]] = []
        with self._lock:
            for register, width, handler in (
                (STS_OFFSET, 2, self._write_sts),
                (EN_OFFSET, 2, self._write_en),
                (CNT_OFFSET, 2, self._write_cnt),
            ):
                value, mask = _lanes(offset, data, register, width)
                if mask:
                    handler(value, mask, actions)
            self._update_sci(actions)
        for action in actions:
            action()

    # ------------------------------------------------------------ host side

    def press_power_button(self) -> None:
        """The power button, pressed while the machine runs: the OS is asked
        for an orderly shutdown (QEMU acpi_pm1_evt_power_down). Waking a
        suspended machine is the machine's part (wake(PWRBTN_STS))."""
        actions: list[Callable[[], None]] = []
        with self._lock:
            if self._en & PWRBTN_STS:
                self._sts |= PWRBTN_STS
                self._update_sci(actions)
        for action in actions:
            action()

    def wake(self, events: int) -> None:
        """The machine woke from S3 because of `events` (RTC_STS, PWRBTN_STS):
        the block as after a reset, then WAK_STS and the events in PM1_STS."""
        actions: list[Callable[[], None]] = []
        with self._lock:
            self._en = 0
            self._cnt = SCI_EN
            self._timer_overflow_tick = 0
            self._sts = WAK_STS | (events & WAKE_EVENTS)
            self._update_sci(actions)
        for action in actions:
            action()

    @property
    def rtc_wake_enabled(self) -> bool:
        """RTC_EN: the RTC alarm may wake the machine from S3."""
        with self._lock:
            return bool(self._en & RTC_EN)

    def timer_wake_delay(self) -> Optional[float]:
        """Seconds until the PM timer's next overflow wakes the machine from
        S3, or None when it cannot: TMR_EN clear, or TMR_STS already set
        (QEMU acpi_update_sci arms its wake timer only then)."""
        with self._lock:
            if not self._en & TMR_EN or self._status() & TMR_STS:
                return None
            return max(0, self._timer_overflow_tick - self.timer_ticks()) / PM_TMR_FREQUENCY

    def timer_ticks(self) -> int:
        """Ticks of the 3.579545 MHz clock since construction (not truncated)."""
        return (self._now() - self._start) * PM_TMR_FREQUENCY // NANOSECONDS

    @property
    def sci_level(self) -> bool:
        return self._sci_level

    # ------------------------------------------------------------ state

    def save_state(self) -> dict:
        """The registers, and the PM timer as its count: it stops while the
        machine is not running (as QEMU's virtual clock) and goes on from there."""
        with self._lock:
            return {"sts": self._status(), "en": self._en, "cnt": self._cnt, "timer_ticks": self.timer_ticks(),
                    "timer_overflow_tick": self._timer_overflow_tick,
                    "reset_control": self.reset_control.save_state()}

    def restore_state(self, state: dict) -> None:
        reader = StateReader(state, "acpi-pm")
        sts, en, cnt = (reader.integer(name, 0, 0xFFFF) for name in ("sts", "en", "cnt"))
        ticks = reader.integer("timer_ticks", 0, MAX_TICKS)
        overflow_tick = reader.integer("timer_overflow_tick", 0, MAX_TICKS + TIMER_HALF_PERIOD)
        reset_control = reader.nested("reset_control")      # checked by ResetControl
        reader.finish()
        if cnt & SLP_EN or not cnt & SCI_EN:
            raise reader.fail("cnt", f"{cnt:#x}: SLP_EN reads 0 and SCI_EN 1")
        self.reset_control.restore_state(reset_control)
        actions: list = []
        with self._lock:
            self._sts, self._en, self._cnt = sts, en, cnt
            # the smallest start that gives `ticks` now
            self._start = self._now() - (ticks * NANOSECONDS + PM_TMR_FREQUENCY - 1) // PM_TMR_FREQUENCY
            self._timer_overflow_tick = overflow_tick
            self._update_sci(actions)                   # the line moves only if its level changes
        for action in actions:
            action()

    # ------------------------------------------------------------ registers

    def _register_image(self) -> bytes:
        timer = self.timer_ticks() & ((1 << PM_TMR_BITS) - 1)
        return (
            self._status().to_bytes(2, "little")
            + self._en.to_bytes(2, "little")
            + self._cnt.to_bytes(2, "little")
            + b"\xff\xff"  # offsets 6-7: nothing there
            + timer.to_bytes(4, "little")
        )

    def _status(self) -> int:
        if self.timer_ticks() >= self._timer_overflow_tick:
            self._sts |= TMR_STS
        return self._sts

    def _write_sts(self, value: int, mask: int, actions: list) -> None:
        clear = value & mask & self._status()
        if clear & TMR_STS:
            # Next TMR_STS when bit 23 toggles again (QEMU acpi_pm_tmr_calc_overflow_time).
            ticks = self.timer_ticks()
            self._timer_overflow_tick = (ticks + TIMER_HALF_PERIOD) & ~(TIMER_HALF_PERIOD - 1)
        self._sts &= ~clear

    def _write_en(self, value: int, mask: int, actions: list) -> None:
        self._en = (self._en & ~mask) | (value & mask)

    def _write_cnt(self, value: int, mask: int, actions: list) -> None:
        value = (self._cnt & ~mask) | (value & mask)
        self._cnt = (value & ~SLP_EN) | SCI_EN  # SLP_EN is write-only; ACPI is always on
        if not value & SLP_EN:
            return
        sleep_type = (value & SLP_TYP_MASK) >> SLP_TYP_SHIFT
        if sleep_type in (SLP_TYP_S5, SLP_TYP_S4):
            actions.append(self._on_poweroff)
        elif sleep_type == SLP_TYP_S3:
            actions.append(lambda: self._on_sleep(3))
        # Other sleep types mean nothing on this platform; QEMU ignores them.

    def _update_sci(self, actions: list) -> None:
        level = bool(self._status() & self._en & SCI_EVENTS)
        if level != self._sci_level:
            self._sci_level = level
            if self._set_sci is not None:
                set_sci = self._set_sci
                actions.append(lambda: set_sci(level))

    def __repr__(self) -> str:
        return f"AcpiPm(sts={self._sts:#06x}, en={self._en:#06x}, cnt={self._cnt:#06x})"


class ResetControl:
    """The chipset reset register at 0xcf9 (ICH9 RST_CNT), one byte."""

    def __init__(self, on_reset: Callable[[], None]) -> None:
        self._on_reset = on_reset
        self._value = 0
        self.reset_requests = 0

    def save_state(self) -> dict:
        return {"value": self._value, "reset_requests": self.reset_requests}

    def restore_state(self, state: dict) -> None:
        reader = StateReader(state, "acpi-pm reset control")
        value = reader.integer("value", 0, RST_KEEP)
        requests = reader.integer("reset_requests", 0, 1 << 64)
        reader.finish()
        if value & ~RST_KEEP:
            raise reader.fail("value", f"{value:#x} has bits outside {RST_KEEP:#x}")
        self._value, self.reset_requests = value, requests

    def read(self, offset: int, size: int) -> bytes:
        if offset != 0:
            return b"\xff" * size
        return bytes((self._value,)) + b"\xff" * (size - 1)

    def write(self, offset: int, data: bytes) -> None:
        if offset != 0 or not data:
            return
        value = data[0]
        if value & RST_CPU:
            self.reset_requests += 1
            self._on_reset()
            return
        self._value = value & RST_KEEP


def _lanes(offset: int, data: bytes, register: int, width: int) -> tuple[int, int]:
    """(value, byte mask) of the part of a write that falls on one register."""
    value = mask = 0
    for i, byte in enumerate(data):
        lane = offset + i - register
        if 0 <= lane < width:
            value |= byte << (8 * lane)
            mask |= 0xFF << (8 * lane)
    return value, mask
