"""MC146818 real-time clock and CMOS RAM at ports 0x70 (index) / 0x71 (data).

Register it at 0x70, length 2.  Semantics follow QEMU hw/rtc/mc146818rtc.c,
and the memory-size bytes are those QEMU's pc_cmos_init (hw/i386/pc.c)
leaves for the firmware and the kernel.

* Index port: bits 0-6 select one of 128 bytes; bit 7 (NMI disable on a PC)
  is kept in `nmi_disabled` and otherwise ignored.  Reading the index port
  returns 0xFF, as in QEMU (the port is write-only on real chipsets).
* Time registers 0x00-0x09 and the century byte 0x32 (also reachable as
  0x37, the IBM PS/2 century byte, which QEMU aliases) come from the clock
  `now()` (seconds since the epoch, UTC): BCD unless register B's DM bit
  selects binary, 24-hour unless register B bit 1 is clear (then 1-12 with
  bit 7 = PM).  The guest can set the clock: writes to time registers while
  the clock runs, or clearing register B's SET bit, move the guest clock to
  the register contents (kept as an offset from `now()`).  While SET is set,
  or the divider is held in reset (register A bits 4-6), the time registers
  are plain storage.
* Register A resets to 0x26; its UIP bit (7) is read-only and is set only in
  the last 244 us of each guest second, as in QEMU, so it never stays set.
* Register B resets to 0x02 (24 hour, BCD).  Setting SET clears UIE (QEMU).
* Update cycles: at each second boundary of the running clock register C
  gains UF (bit 4), and AF (bit 5) when the alarm registers 0x01, 0x03, 0x05
  match the new time: each alarm byte equals the seconds, minutes or hours
  register as the clock encodes it (BCD or binary, 12- or 24-hour), or is a
  "don't care" value 0xC0-0xFF.  A flag that is new and enabled in register
  B (UIE, AIE) sets IRQF and raises the interrupt line; an alarm interrupt
  also calls `on_alarm()` (the machine's RTC wake event).  Enabling an
  interrupt whose flag is already set raises the line at once (QEMU).
  Flags are brought up to date at each register access and, while UIE or
  AIE is on, by a timer on the device's worker at the next update or alarm
  (`attach(context)` gives the line and the worker).  Deviation: no
  periodic interrupt (PF, PIE).
* Register C reads and clears the flags and lowers the line.
* Register D reads 0x80 (valid RAM and time); writes to C and D are ignored.
* `reset()` is what a machine reset (and QEMU's S3 wake, which is one) does:
  PIE, AIE and SQWE cleared in B, the flags cleared, the line lowered; the
  clock and the RAM stay.
* Multi-byte accesses are split into byte accesses at consecutive ports (so
  a 16-bit write to 0x70 selects an index and writes its value), as QEMU's
  1-byte implementation size does.
"""

from __future__ import annotations

import math
import threading
import time
from typing import Callable, Optional, Sequence

from .state import StateReader

CMOS_LENGTH = 2  # index port, then data port (0x70, 0x71 on a PC)
CMOS_SIZE = 128
INDEX_MASK = 0x7F
NMI_DISABLE = 0x80

# RTC registers.
SECONDS = 0x00
SECONDS_ALARM = 0x01
MINUTES = 0x02
MINUTES_ALARM = 0x03
HOURS = 0x04
HOURS_ALARM = 0x05
DAY_OF_WEEK = 0x06
DAY_OF_MONTH = 0x07
MONTH = 0x08
YEAR = 0x09
REG_A = 0x0A
REG_B = 0x0B
REG_C = 0x0C
REG_D = 0x0D
CENTURY = 0x32
IBM_PS2_CENTURY = 0x37
TIME_REGISTERS = frozenset((SECONDS, MINUTES, HOURS, DAY_OF_WEEK, DAY_OF_MONTH, MONTH, YEAR, CENTURY))

REG_A_UIP = 0x80
REG_A_DIVIDER = 0x70
REG_A_DIVIDER_RESET = 0x60  # both bits set: divider chain held in reset
REG_A_RESET = 0x26  # 32.768 kHz time base, 1024 Hz periodic rate
REG_B_SET = 0x80
REG_B_PIE = 0x40
REG_B_AIE = 0x20
REG_B_UIE = 0x10
REG_B_SQWE = 0x08
REG_B_INTERRUPT_ENABLES = REG_B_PIE | REG_B_AIE | REG_B_UIE
REG_B_DM_BINARY = 0x04
REG_B_24H = 0x02
REG_B_RESET = REG_B_24H
REG_C_IRQF = 0x80
REG_C_AF = 0x20  # each flag sits at its enable's bit in register B
REG_C_UF = 0x10
REG_D_VRT = 0x80

ALARM_REGISTERS = (HOURS_ALARM, MINUTES_ALARM, SECONDS_ALARM)
ALARM_DONT_CARE = 0xC0  # an alarm byte with both top bits set matches any value

HOUR_PM = 0x80  # in HOURS, 12-hour mode
UIP_HOLD_SECONDS = 8 / 32768  # QEMU's UIP_HOLD_LENGTH: 244 us before each update
SECONDS_PER_DAY = 86400
# Further than any date the registers can hold (years 0-9999) from any host clock.
MAX_CLOCK_OFFSET = 1 << 40

# PC firmware memory-size bytes (QEMU pc_cmos_init).
BASE_MEMORY_LO, BASE_MEMORY_HI = 0x15, 0x16  # KiB below 1 MiB, at most 640
EXT_MEMORY_LO, EXT_MEMORY_HI = 0x17, 0x18  # KiB above 1 MiB, at most 65535
EXT_MEMORY_COPY_LO, EXT_MEMORY_COPY_HI = 0x30, 0x31  # the same value again
MEMORY_ABOVE_16M_LO, MEMORY_ABOVE_16M_HI = 0x34, 0x35  # 64 KiB units, 16 MiB..4 GiB
MEMORY_ABOVE_4G = (0x5B, 0x5C, 0x5D)  # 64 KiB units, 24 bits, low byte first
CPU_COUNT_MINUS_ONE = 0x5F

KIB = 1 << 10
MIB = 1 << 20
# Guest RAM above this address is placed from 4 GiB on (pyvmm's layout
# leaves [3 GiB, 4 GiB) for MMIO; see arch/x86_64/layout.py).
DEFAULT_LOW_RAM_LIMIT = 0xC000_0000


class Cmos:
    # Writing the index port only selects a register (see devices/bus.py,
    # "posted writes"); the data port's next access sees it.
    posted_writes = ((0, 1),)

    def __init__(
        self,
        ram_size: int,
        cpus: int = 1,
        now: Callable[[], float] = time.time,
        low_ram_limit: int = DEFAULT_LOW_RAM_LIMIT,
        on_alarm: Optional[Callable[[], None]] = None,
    ) -> None:
        if ram_size < 0 or cpus < 1:
            raise ValueError(f"bad CMOS configuration: ram_size={ram_size}, cpus={cpus}")
        self._now = now
        self._on_alarm = on_alarm
        self._lock = threading.Lock()
        self._context = None  # the interrupt line and the timers' worker, once attached
        self._timer = None  # the worker's timer for the next update or alarm that interrupts
        self._timer_due = None  # (guest second, clock offset) it is for
        self._flags = 0  # register C
        self._ram = bytearray(CMOS_SIZE)
        self._index = 0
        self.nmi_disabled = False
        self._ram[REG_A] = REG_A_RESET
        self._ram[REG_B] = REG_B_RESET
        self._ram[REG_D] = REG_D_VRT
        self._offset = 0.0  # guest clock = now() + offset
        self._updated_second = math.floor(self._guest_time())  # the last update cycle accounted
        self._refresh_time_registers()
        self._store_memory_sizes(ram_size, cpus, low_ram_limit)

    def _store_memory_sizes(self, ram_size: int, cpus: int, low_ram_limit: int) -> None:
        below_4g = min(ram_size, low_ram_limit)
        above_4g = ram_size - below_4g
        self._store_u16(BASE_MEMORY_LO, min(below_4g // KIB, 640))
        extended = min(max(below_4g - MIB, 0) // KIB, 0xFFFF)
        self._store_u16(EXT_MEMORY_LO, extended)
        self._store_u16(EXT_MEMORY_COPY_LO, extended)
        self._store_u16(MEMORY_ABOVE_16M_LO, min(max(below_4g - 16 * MIB, 0) // (64 * KIB), 0xFFFF))
        high = above_4g // (64 * KIB)
        for shift, index in enumerate(MEMORY_ABOVE_4G):
            self._ram[index] = (high >> (8 * shift)) & 0xFF
        self._ram[CPU_COUNT_MINUS_ONE] = (cpus - 1) & 0xFF

    def _store_u16(self, index: int, value: int) -> None:
        self._ram[index] = value & 0xFF
        self._ram[index + 1] = (value >> 8) & 0xFF

    # ------------------------------------------------------- device contract

    def attach(self, context) -> None:
        """Gets the interrupt line (context.irq) and the worker its timers run on."""
        with self._lock:
            self._context = context
            self._schedule()

    def read(self, offset: int, size: int) -> bytes:
        with self._lock:
            alarm = self._update()
            data = bytes(self._read_port(offset + i) for i in range(size))
        if alarm:
            self._alarm()
        return data

    def write(self, offset: int, data: bytes) -> None:
        with self._lock:
            alarm = self._update()
            for i, value in enumerate(data):
                self._write_port(offset + i, value)
        if alarm:
            self._alarm()

    def _read_port(self, offset: int) -> int:
        if offset & 1 == 0:
            return 0xFF  # the index port is write-only
        return self._read_register()

    def _write_port(self, offset: int, value: int) -> None:
        if offset & 1 == 0:
            self._index = value & INDEX_MASK
            self.nmi_disabled = bool(value & NMI_DISABLE)
        else:
            self._write_register(value)

    # ------------------------------------------------------------ registers

    def _read_register(self) -> int:
        if self._index == IBM_PS2_CENTURY:
            self._index = CENTURY  # QEMU moves the index too
        index = self._index
        ram = self._ram
        if index in TIME_REGISTERS:
            if self._running():
                self._refresh_time_registers()
            return ram[index]
        if index == REG_A:
            return ram[REG_A] | (REG_A_UIP if self._update_in_progress() else 0)
        if index == REG_C:
            return self._read_and_clear_c()
        return ram[index]

    def _write_register(self, value: int) -> None:
        if self._index == IBM_PS2_CENTURY:
            self._index = CENTURY
        index = self._index
        if index in TIME_REGISTERS:
            running = self._running()
            if running:
                self._refresh_time_registers()  # so the other fields are current
            self._ram[index] = value
            if running:
                self._set_clock_from_registers(self._guest_phase())
        elif index == REG_A:
            self._write_a(value)
        elif index == REG_B:
            self._write_b(value)
        elif index in (REG_C, REG_D):
            return  # read-only
        else:
            self._ram[index] = value
        if index in TIME_REGISTERS or index in ALARM_REGISTERS or index in (REG_A, REG_B):
            self._schedule()

    def _write_a(self, value: int) -> None:
        was_running = self._running()
        new_a = value & ~REG_A_UIP  # UIP is read-only
        if was_running and not self._running(a=new_a):
            self._refresh_time_registers()  # the clock stops at this time
        self._ram[REG_A] = new_a
        if not was_running and self._running():
            # Leaving divider reset: the first update comes half a second later.
            self._set_clock_from_registers(0.5)

    def _write_b(self, value: int) -> None:
        was_running = self._running()
        if value & REG_B_SET:
            if was_running:
                self._refresh_time_registers()  # freeze the registers at this time
            value &= ~REG_B_UIE  # as QEMU: set mode disables update interrupts
        elif not was_running and self._running(b=value):
            # Leaving set mode: the registers, still in the old B's format
            # (as QEMU reads them), become the time; the second's phase stays.
            self._set_clock_from_registers(self._guest_phase())
        self._ram[REG_B] = value
        # An interrupt enabled while its flag is already set fires at once.
        if value & self._flags & REG_B_INTERRUPT_ENABLES:
            self._flags |= REG_C_IRQF
            self._set_line(True)
        else:
            self._flags &= ~REG_C_IRQF
            self._set_line(False)

    def _read_and_clear_c(self) -> int:
        flags, self._flags = self._flags, 0
        self._set_line(False)
        self._schedule()  # cleared flags can be raised again
        return flags

    # ------------------------------------------------- update cycles, alarm

    def _update(self) -> bool:
        """Brings register C up to the running clock, raising the line for a
        new enabled flag; True when that includes the alarm interrupt."""
        new = self._advance()
        if not new:
            return False
        b = self._ram[REG_B]
        if new & b & REG_B_INTERRUPT_ENABLES:
            self._flags |= REG_C_IRQF
            self._set_line(True)
        return bool(new & REG_C_AF and b & REG_B_AIE)

    def _advance(self) -> int:
        """Accounts the update cycles since the last one accounted: UF, and AF
        if the alarm matched at one of them. Returns the flags newly set."""
        if not self._running():
            return 0
        second = math.floor(self._guest_time())
        if second == self._updated_second:
            return 0
        flags = REG_C_UF
        if second > self._updated_second:
            alarm = self._next_alarm(self._updated_second)
            if alarm is not None and alarm <= second:
                flags |= REG_C_AF
        self._updated_second = second
        new = flags & ~self._flags
        self._flags |= flags
        return new

    def _next_alarm(self, after: int) -> Optional[int]:
        ram = self._ram
        return next_alarm(after, [ram[index] for index in ALARM_REGISTERS], ram[REG_B])

    def _schedule(self) -> None:
        """Arms the worker's timer for the next update cycle that can raise
        the line: the next second with UIE, the next alarm with AIE (a flag
        still set cannot raise it again). A timer already due then, on the
        same clock, stays."""
        due = self._next_interrupt()
        if self._timer is not None:
            if (due, self._offset) == self._timer_due:
                return
            self._timer.cancel()
            self._timer = None
        if due is not None:
            self._timer = self._context.worker.call_later(due - self._guest_time(), self._tick)
            self._timer_due = (due, self._offset)

    def _next_interrupt(self) -> Optional[int]:
        """The guest second of the next update cycle that can raise the line, if any."""
        if self._context is None or not self._running():
            return None
        b, flags, second = self._ram[REG_B], self._flags, self._updated_second
        due = []
        if b & REG_B_UIE and not flags & REG_C_UF:
            due.append(second + 1)
        if b & REG_B_AIE and not flags & REG_C_AF:
            alarm = self._next_alarm(second)
            if alarm is not None:
                due.append(alarm)
        return min(due) if due else None

    def _tick(self) -> None:
        """The timer, on the worker: the update cycle it was armed for (or,
        woken early, nothing yet), then the next timer."""
        with self._lock:
            self._timer = None
            alarm = self._update()
            self._schedule()
        if alarm:
            self._alarm()

    def _alarm(self) -> None:
        if self._on_alarm is not None:
            self._on_alarm()

    def _set_line(self, level: bool) -> None:
        # Called under the device lock, so the line's level follows register C's order.
        if self._context is not None and self._context.irq is not None:
            self._context.irq.set(level)

    # --------------------------------------------------------------- clock

    def _running(self, a: int | None = None, b: int | None = None) -> bool:
        if a is None:
            a = self._ram[REG_A]
        if b is None:
            b = self._ram[REG_B]
        return not b & REG_B_SET and (a & REG_A_DIVIDER) <= 0x20

    def _guest_time(self) -> float:
        return self._now() + self._offset

    def _guest_phase(self) -> float:
        guest = self._guest_time()
        return guest - math.floor(guest)

    def _update_in_progress(self) -> bool:
        return self._running() and self._guest_phase() >= 1.0 - UIP_HOLD_SECONDS

    def _refresh_time_registers(self) -> None:
        """Encode the guest clock into the time registers (QEMU rtc_set_cmos)."""
        seconds = math.floor(self._guest_time())
        days, second_of_day = divmod(seconds, SECONDS_PER_DAY)
        year, month, day = _civil_from_days(days)
        hour, rest = divmod(second_of_day, 3600)
        minute, second = divmod(rest, 60)
        ram, b = self._ram, self._ram[REG_B]
        ram[SECONDS] = _encode(second, b)
        ram[MINUTES] = _encode(minute, b)
        ram[HOURS] = _encode_hour(hour, b)
        ram[DAY_OF_WEEK] = _encode((days + 4) % 7 + 1, b)  # 1 = Sunday; 1970-01-01 was a Thursday
        ram[DAY_OF_MONTH] = _encode(day, b)
        ram[MONTH] = _encode(month, b)
        ram[YEAR] = _encode(year % 100, b)
        ram[CENTURY] = _encode((year // 100) % 100, b)

    def _set_clock_from_registers(self, phase: float) -> None:
        """Move the guest clock to the time registers (QEMU rtc_set_time)."""
        ram, b = self._ram, self._ram[REG_B]
        hours = ram[HOURS]
        hour = _decode(hours & 0x7F, b)
        if not b & REG_B_24H:
            hour %= 12
            if hours & HOUR_PM:
                hour += 12
        year = _decode(ram[YEAR], b) + _decode(ram[CENTURY], b) * 100
        days = _days_from_civil(year, _decode(ram[MONTH], b), 1) + _decode(ram[DAY_OF_MONTH], b) - 1
        seconds = days * SECONDS_PER_DAY + hour * 3600 + _decode(ram[MINUTES], b) * 60 + _decode(ram[SECONDS], b)
        self._offset = seconds + phase - self._now()
        self._updated_second = seconds

    # ------------------------------------------------------------ state

    def save_state(self) -> dict:
        """The 128 bytes, the index, register C's flags, and the guest clock as
        an offset from the host's: a restored RTC keeps following real time, as
        a battery-backed one does while the machine is off."""
        with self._lock:
            return {"ram": bytes(self._ram).hex(), "index": self._index, "nmi_disabled": self.nmi_disabled,
                    "flags": self._flags, "clock_offset": self._offset,
                    "updated_second": self._updated_second}

    def restore_state(self, state: dict) -> None:
        reader = StateReader(state, "cmos")
        ram = reader.data("ram", CMOS_SIZE, length=CMOS_SIZE)
        index = reader.integer("index", 0, INDEX_MASK)
        nmi_disabled = reader.boolean("nmi_disabled")
        flags = reader.integer("flags", 0, REG_C_IRQF | REG_C_UF | REG_C_AF)
        offset = reader.number("clock_offset", -MAX_CLOCK_OFFSET, MAX_CLOCK_OFFSET)
        updated = reader.integer("updated_second", -MAX_CLOCK_OFFSET, 2 * MAX_CLOCK_OFFSET)
        reader.finish()
        with self._lock:
            self._ram[:] = ram
            self._index, self.nmi_disabled = index, nmi_disabled
            self._flags, self._offset, self._updated_second = flags, offset, updated
            self._set_line(bool(flags & REG_C_IRQF))
            self._schedule()

    # ------------------------------------------------------------ host side

    def reset(self) -> None:
        """A machine reset (QEMU rtc_reset_enter/hold): the periodic, alarm
        and square-wave enables and every flag cleared, the line lowered."""
        with self._lock:
            self._ram[REG_B] &= ~(REG_B_PIE | REG_B_AIE | REG_B_SQWE)
            self._flags = 0
            if self._running():
                self._updated_second = math.floor(self._guest_time())
            self._set_line(False)
            self._schedule()

    @property
    def alarm_armed(self) -> bool:
        """Whether an alarm interrupt can still come: AIE on, the clock
        running, an alarm time the clock can reach, and AF not left set
        (until register C is read, a new match raises nothing)."""
        with self._lock:
            return bool(self._ram[REG_B] & REG_B_AIE and self._running()
                        and not self._flags & REG_C_AF
                        and self._next_alarm(self._updated_second) is not None)

    def snapshot(self) -> bytes:
        """The 128 CMOS bytes as stored, without read side effects."""
        with self._lock:
            return bytes(self._ram)

    def __repr__(self) -> str:
        return f"Cmos(index={self._index:#04x}, a={self._ram[REG_A]:#04x}, b={self._ram[REG_B]:#04x})"


def _encode_hour(hour: int, reg_b: int) -> int:
    """The hours register for `hour` (0-23) in register B's format."""
    if reg_b & REG_B_24H:
        return _encode(hour, reg_b)
    return _encode(hour % 12 or 12, reg_b) | (HOUR_PM if hour >= 12 else 0)


def alarm_matches(alarm: int, register: int) -> bool:
    """An alarm byte against a time register as the clock encodes it."""
    return alarm & ALARM_DONT_CARE == ALARM_DONT_CARE or alarm == register


def next_alarm(after: int, alarm: Sequence[int], reg_b: int) -> Optional[int]:
    """The first second after `after` (seconds since the epoch, guest clock)
    at which the alarm bytes (hours, minutes, seconds) match the time
    registers in register B's format; None if they never do (a byte that is
    neither "don't care" nor a value the clock shows)."""
    hours_alarm, minutes_alarm, seconds_alarm = alarm
    hours = [h for h in range(24) if alarm_matches(hours_alarm, _encode_hour(h, reg_b))]
    minutes = [m for m in range(60) if alarm_matches(minutes_alarm, _encode(m, reg_b))]
    seconds = [s for s in range(60) if alarm_matches(seconds_alarm, _encode(s, reg_b))]
    if not (hours and minutes and seconds):
        return None
    day, second_of_day = divmod(after, SECONDS_PER_DAY)
    start = day * SECONDS_PER_DAY
    hour, rest = divmod(second_of_day, 3600)
    minute, second = divmod(rest, 60)
    # The smallest (h, m, s) after (hour, minute, second), else the first one tomorrow.
    for h in hours:
        if h > hour:
            return start + h * 3600 + minutes[0] * 60 + seconds[0]
        if h < hour:
            continue
        for m in minutes:
            if m > minute:
                return start + h * 3600 + m * 60 + seconds[0]
            if m < minute:
                continue
            for s in seconds:
                if s > second:
                    return start + h * 3600 + m * 60 + s
    return start + SECONDS_PER_DAY + hours[0] * 3600 + minutes[0] * 60 + seconds[0]


def _encode(value: int, reg_b: int) -> int:
    if reg_b & REG_B_DM_BINARY:
        return value & 0xFF
    return ((value // 10) << 4) | (value % 10)


def _decode(value: int, reg_b: int) -> int:
    if reg_b & REG_B_DM_BINARY:
        return value
    return (value >> 4) * 10 + (value & 0x0F)  # like QEMU, no check of the nibbles


def _days_from_civil(year: int, month: int, day: int) -> int:
    """Days since 1970-01-01 of a proleptic Gregorian date; any month number works."""
    year += (month - 1) // 12
    month = (month - 1) % 12 + 1
    if month <= 2:
        year -= 1
    era = year // 400
    year_of_era = year - era * 400
    day_of_year = (153 * (month + (-3 if month > 2 else 9)) + 2) // 5 + day - 1
    day_of_era = year_of_era * 365 + year_of_era // 4 - year_of_era // 100 + day_of_year
    return era * 146097 + day_of_era - 719468


def _civil_from_days(days: int) -> tuple[int, int, int]:
    """(year, month, day) of a day number from 1970-01-01 (inverse of the above)."""
    days += 719468
    era = days // 146097
    day_of_era = days - era * 146097
    year_of_era = (day_of_era - day_of_era // 1460 + day_of_era // 36524 - day_of_era // 146096) // 365
    day_of_year = day_of_era - (365 * year_of_era + year_of_era // 4 - year_of_era // 100)
    month_index = (5 * day_of_year + 2) // 153
    day = day_of_year - (153 * month_index + 2) // 5 + 1
    month = month_index + (3 if month_index < 10 else -9)
    year = year_of_era + era * 400 + (1 if month <= 2 else 0)
    return year, month, day
