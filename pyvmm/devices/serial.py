"""16550A UART register model: the PC's COM1 (8 registers, usually at 0x3f8).

Semantics follow the PC16550D datasheet and QEMU's hw/char/serial.c (the
UART Linux guests are used to), with these deliberate simplifications:

* Transmission is instantaneous.  A THR byte goes straight to the `output`
  callable (or, in loopback, into our own receiver), so LSR.THRE and
  LSR.TEMT always read 1 and a THR write always ends with a fresh
  "THR empty" interrupt pending.  The TX FIFO therefore never holds data.
* There are no timers.  The receiver's character-timeout interrupt
  (IIR 0x0c) is reported whenever the RX FIFO is enabled, holds data below
  its trigger level, and no more input can arrive without guest action
  (the host backlog is empty, or the UART is in loopback).  Real hardware
  waits four character times for the same condition.
* Host input is never lost to overruns.  `feed()` queues bytes in a host
  backlog (capped at HOST_BACKLOG_LIMIT bytes; the excess is dropped and
  counted); the backlog tops up the receiver whenever it has room.  Only
  loopback traffic can overrun the receiver (LSR.OE).
* Break, parity and framing errors are never generated; their LSR bits and
  the receiver-line-status interrupt logic are still modelled.
* Reading RBR while the receiver is empty returns 0 (QEMU does the same in
  FIFO mode).
* At reset MCR is 0, as in the datasheet (QEMU sets OUT2).  The interrupt
  line is driven regardless of MCR.OUT2 and of loopback, as in QEMU.
* In loopback mode MSR's delta bits track changes of the looped-back MCR
  outputs, as the datasheet describes (QEMU reports the lines but no
  deltas there).
* FCR's clear bits (1 and 2) act even while FCR bit 0 leaves the FIFOs off
  (the datasheet ignores them then; QEMU acts on them too), and an RX clear
  keeps host input that the guest has not read (see _clear_rx).
* reset() also resets the scratch register and the divisor latch, as QEMU's.

Threading: one lock guards all device state.  The vCPU thread calls
read()/write() while a host input thread calls feed().  The `output` and
`irq` callables run with the lock held, in whichever thread caused the
event, so they must not call back into this device.

Fast paths: THR is declared a posted write and SCR too, LSR a cached
read (pyvmm/devices/bus.py). A device attached to a machine publishes,
with its lock held, after every access and host event: whether a THR write
is now plain output (DLAB off, no loopback, THR-empty interrupt off) and so
may be queued, and LSR's value while reading it has no side effect.
Queued THR writes come back as one write_many() call. The interrupt line
moves only after that publication (`_settle`), so a guest that takes the
interrupt reads the state that raised it.
"""

from __future__ import annotations

import threading
from collections import deque
from typing import Callable, Optional

from .bus import ONE_BYTE
from .state import StateReader

REGISTER_COUNT = 8

# Register offsets.  DLL/DLM replace RBR-THR/IER while LCR.DLAB is set.
RBR = THR = DLL = 0
IER = DLM = 1
IIR = FCR = 2
LCR = 3
MCR = 4
LSR = 5
MSR = 6
SCR = 7

IER_RDI = 0x01  # received data available (and character timeout)
IER_THRI = 0x02  # transmitter holding register empty
IER_RLSI = 0x04  # receiver line status (errors)
IER_MSI = 0x08  # modem status change
IER_MASK = 0x0F

# IIR interrupt identification, highest priority first.
IIR_RLSI = 0x06
IIR_CTI = 0x0C
IIR_RDI = 0x04
IIR_THRI = 0x02
IIR_MSI = 0x00
IIR_NO_INT = 0x01
IIR_FIFOS_ENABLED = 0xC0

FCR_FIFO_ENABLE = 0x01
FCR_CLEAR_RX = 0x02
FCR_CLEAR_TX = 0x04
FCR_DMA_MODE = 0x08
FCR_TRIGGER_MASK = 0xC0
FCR_STICKY = FCR_TRIGGER_MASK | FCR_DMA_MODE | FCR_FIFO_ENABLE
RX_TRIGGER_LEVELS = {0x00: 1, 0x40: 4, 0x80: 8, 0xC0: 14}

LCR_DLAB = 0x80

MCR_DTR = 0x01
MCR_RTS = 0x02
MCR_OUT1 = 0x04
MCR_OUT2 = 0x08
MCR_LOOP = 0x10
MCR_MASK = 0x1F

LSR_DR = 0x01
LSR_OE = 0x02
LSR_PE = 0x04
LSR_FE = 0x08
LSR_BI = 0x10
LSR_THRE = 0x20
LSR_TEMT = 0x40
LSR_ERRORS = LSR_OE | LSR_PE | LSR_FE | LSR_BI

MSR_DCTS = 0x01
MSR_DDSR = 0x02
MSR_TERI = 0x04
MSR_DDCD = 0x08
MSR_DELTAS = 0x0F
MSR_CTS = 0x10
MSR_DSR = 0x20
MSR_RI = 0x40
MSR_DCD = 0x80
MSR_LINES = 0xF0
# What a "cable" to the host presents outside loopback (same as QEMU).
MSR_HOST_LINES = MSR_DCD | MSR_DSR | MSR_CTS

FIFO_DEPTH = 16
HOST_BACKLOG_LIMIT = 1 << 20
RESET_DIVISOR = 0x0C  # 115200 / 12 = 9600 baud



class Serial16550:
    """A 16550A UART; see the module docstring for the model's semantics."""

    posted_writes = ((THR, 1), (SCR, 1))
    cached_reads = ((LSR, 1),)

    def __init__(
        self,
        output: Optional[Callable[[bytes], None]] = None,
        irq: Optional[Callable[[bool], None]] = None,
    ) -> None:
        self._output = output
        self._irq = irq
        self._lock = threading.Lock()
        self._rx: deque[int] = deque()  # receiver FIFO (or the single RBR byte)
        self._backlog: deque[int] = deque()  # host input not yet in the receiver
        self._irq_level = False
        self._irq_told = False  # the level the irq callable last heard
        self._registers = None  # the RegisterState to publish to, once attached
        self._published: tuple = (None, None)
        self.bytes_transmitted = 0  # bytes the guest wrote to THR
        self.bytes_received = 0  # bytes the guest read from RBR
        self.input_bytes_dropped = 0  # host bytes refused because the backlog was full
        self.overruns = 0  # bytes lost to receiver overrun (loopback only)
        self._readers = (
            self._read_rbr,
            self._read_ier,
            self._read_iir,
            self._read_lcr,
            self._read_mcr,
            self._read_lsr,
            self._read_msr,
            self._read_scr,
        )
        self._writers = (
            self._write_thr,
            self._write_ier,
            self._write_fcr,
            self._write_lcr,
            self._write_mcr,
            self._ignore_write,  # LSR: read-only (factory test only)
            self._ignore_write,  # MSR: read-only
            self._write_scr,
        )
        self._reset_registers()

    def _reset_registers(self) -> None:
        self._divisor = RESET_DIVISOR
        self._ier = 0
        self._lcr = 0
        self._mcr = 0
        self._scr = 0
        self._fcr = 0
        self._rx_capacity = 1  # FIFOs off: the receiver holds one byte
        self._rx_trigger = 1
        self._lsr_errors = 0
        self._msr = MSR_HOST_LINES
        self._thr_pending = False
        self._rx.clear()

    # ------------------------------------------------------- device contract

    def read(self, offset: int, size: int) -> bytes:
        # QEMU's UART only implements 1-byte accesses; wider ones are split.
        with self._lock:
            if size == 1:
                value = ONE_BYTE[self._read_register(offset)]
            else:
                value = bytes([self._read_register(offset + i) for i in range(size)])
            self._settle()
            return value

    def write(self, offset: int, data: bytes) -> None:
        with self._lock:
            if len(data) == 1:
                self._write_register(offset, data[0])
            else:
                for i, value in enumerate(data):
                    self._write_register(offset + i, value)
            self._settle()

    def _read_register(self, offset: int) -> int:
        if 0 <= offset < REGISTER_COUNT:
            return self._readers[offset]()
        return 0xFF  # outside the UART: nothing drives the bus

    def _write_register(self, offset: int, value: int) -> None:
        if 0 <= offset < REGISTER_COUNT:
            self._writers[offset](value)

    # ----------------------------------------------------------- host side

    def feed(self, data: bytes) -> None:
        """Queue host input for the guest (thread-safe)."""
        with self._lock:
            room = HOST_BACKLOG_LIMIT - len(self._backlog)
            if len(data) > room:
                self.input_bytes_dropped += len(data) - room
                data = data[:room]
            self._backlog.extend(data)
            self._refill_rx()
            self._update_irq()
            self._settle()

    def pending_input(self) -> int:
        """Host bytes queued but not yet in the receiver."""
        with self._lock:
            return len(self._backlog)

    @property
    def rx_level(self) -> int:
        """Bytes currently in the receiver (FIFO or holding register)."""
        return len(self._rx)

    @property
    def irq_level(self) -> bool:
        """Current level of the interrupt output line."""
        return self._irq_level

    def reset(self) -> None:
        """Hardware reset: registers to reset values, receiver emptied.

        The host backlog survives: it belongs to the host side of the line.
        """
        with self._lock:
            self._reset_registers()
            self._refill_rx()
            self._update_irq()
            self._settle()

    # ----------------------------------------------------------- fast paths

    def attach(self, context) -> None:
        """Drives context.irq (if any) and publishes to context.registers."""
        with self._lock:
            self._registers = getattr(context, "registers", None)
            self._published = (None, None)
            self._publish()
            if context.irq is not None:
                self._irq = context.irq.set
                self._irq_told = self._irq_level
                self._irq(self._irq_level)

    def _publish(self) -> None:
        """Tells the fast path what it may do now (lock held); only changes."""
        registers = self._registers
        if registers is None:
            return
        state = (self.thr_write_is_plain_output(), self.lsr_without_side_effects())
        if state != self._published:
            self._published = state
            registers.allow_posted(THR, state[0])
            registers.publish(LSR, state[1])

    def thr_write_is_plain_output(self) -> bool:
        """Whether a THR write now only sends its byte to `output` (DLAB off,
        no loopback, THR-empty interrupt disabled).  Call with the lock held."""
        return not (self._lcr & LCR_DLAB or self._mcr & MCR_LOOP or self._ier & IER_THRI)

    def lsr_without_side_effects(self) -> Optional[int]:
        """LSR's value if reading it now changes nothing (no error bits to
        clear), else None.  Call with the lock held."""
        return None if self._lsr_errors else self._lsr_value()

    def write_many(self, offset: int, size: int, data: bytes) -> None:
        """Queued writes delivered together: len(data) // size writes of `size`
        bytes at `offset`, in order. Plain THR output goes out in one piece."""
        with self._lock:
            if offset == THR and size == 1 and self.thr_write_is_plain_output():
                self.bytes_transmitted += len(data)
                if self._output is not None:
                    self._output(data)
                self._thr_pending = True
                self._update_irq()
            else:
                for start in range(0, len(data) - size + 1, size):
                    for i in range(size):
                        self._write_register(offset + i, data[start + i])
            self._settle()

    # ----------------------------------------------------------- state

    def save_state(self) -> dict:
        """Registers, both FIFOs (the receiver and the host input not yet in
        it) and the counters, as plain data (pyvmm/devices/state.py)."""
        with self._lock:
            return {
                "divisor": self._divisor, "ier": self._ier, "lcr": self._lcr, "mcr": self._mcr,
                "scr": self._scr, "fcr": self._fcr, "lsr_errors": self._lsr_errors, "msr": self._msr,
                "thr_pending": self._thr_pending,
                "rx": bytes(self._rx).hex(), "backlog": bytes(self._backlog).hex(),
                "bytes_transmitted": self.bytes_transmitted, "bytes_received": self.bytes_received,
                "input_bytes_dropped": self.input_bytes_dropped, "overruns": self.overruns,
            }

    def restore_state(self, state: dict) -> None:
        reader = StateReader(state, "serial")
        registers = {name: reader.integer(name, 0, 0xFF) for name in ("ier", "lcr", "mcr", "scr", "fcr",
                                                                     "lsr_errors", "msr")}
        divisor = reader.integer("divisor", 0, 0xFFFF)
        thr_pending = reader.boolean("thr_pending")
        rx = reader.data("rx", FIFO_DEPTH)
        backlog = reader.data("backlog", HOST_BACKLOG_LIMIT)
        counters = {name: reader.integer(name, 0, 1 << 64) for name in ("bytes_transmitted", "bytes_received",
                                                                       "input_bytes_dropped", "overruns")}
        reader.finish()
        for name, mask in (("ier", IER_MASK), ("mcr", MCR_MASK), ("fcr", FCR_STICKY),
                           ("lsr_errors", LSR_ERRORS)):
            if registers[name] & ~mask:
                raise reader.fail(name, f"{registers[name]:#x} has bits outside {mask:#x}")
        capacity = FIFO_DEPTH if registers["fcr"] & FCR_FIFO_ENABLE else 1
        if len(rx) > capacity:
            raise reader.fail("rx", f"{len(rx)} bytes in a receiver of {capacity}")
        with self._lock:
            self._divisor = divisor
            self._ier, self._lcr, self._mcr, self._scr = (registers[name] for name in ("ier", "lcr", "mcr", "scr"))
            self._fcr, self._lsr_errors, self._msr = registers["fcr"], registers["lsr_errors"], registers["msr"]
            self._rx_capacity = capacity
            self._rx_trigger = RX_TRIGGER_LEVELS[self._fcr & FCR_TRIGGER_MASK] if capacity > 1 else 1
            self._thr_pending = thr_pending
            self._rx = deque(rx)
            self._backlog = deque(backlog)
            for name, value in counters.items():
                setattr(self, name, value)
            self._refill_rx()
            self._update_irq()
            self._settle()              # the line moves only if its level changes

    def register_snapshot(self) -> dict[str, int]:
        """Register values without read side effects (for stats and tests)."""
        with self._lock:
            return {
                "IER": self._ier,
                "IIR": self._iir_value(self._interrupt_id()),
                "FCR": self._fcr,
                "LCR": self._lcr,
                "MCR": self._mcr,
                "LSR": self._lsr_value(),
                "MSR": self._msr,
                "SCR": self._scr,
                "DLL": self._divisor & 0xFF,
                "DLM": self._divisor >> 8,
            }

    # ------------------------------------------------------ register reads

    def _read_rbr(self) -> int:
        if self._lcr & LCR_DLAB:
            return self._divisor & 0xFF
        rx = self._rx
        if not rx:
            return 0
        value = rx.popleft()
        self.bytes_received += 1
        self._refill_rx()
        self._update_irq()
        return value

    def _read_ier(self) -> int:
        if self._lcr & LCR_DLAB:
            return self._divisor >> 8
        return self._ier

    def _read_iir(self) -> int:
        interrupt_id = self._interrupt_id()
        if interrupt_id == IIR_THRI:
            # Reading IIR acknowledges a THR-empty interrupt (only that one).
            self._thr_pending = False
            self._update_irq()
        return self._iir_value(interrupt_id)

    def _read_lcr(self) -> int:
        return self._lcr

    def _read_mcr(self) -> int:
        return self._mcr

    def _read_lsr(self) -> int:
        value = self._lsr_value()
        if self._lsr_errors:
            self._lsr_errors = 0  # error bits clear on read
            self._update_irq()
        return value

    def _read_msr(self) -> int:
        value = self._msr
        if value & MSR_DELTAS:
            self._msr = value & MSR_LINES  # delta bits clear on read
            self._update_irq()
        return value

    def _read_scr(self) -> int:
        return self._scr

    def _iir_value(self, interrupt_id: int) -> int:
        return interrupt_id | (IIR_FIFOS_ENABLED if self._fcr & FCR_FIFO_ENABLE else 0)

    def _lsr_value(self) -> int:
        # THRE and TEMT: transmission is instantaneous, so always empty.
        return LSR_THRE | LSR_TEMT | self._lsr_errors | (LSR_DR if self._rx else 0)

    # ----------------------------------------------------- register writes

    def _write_thr(self, value: int) -> None:
        if self._lcr & LCR_DLAB:
            self._divisor = (self._divisor & 0xFF00) | value
            return
        self.bytes_transmitted += 1
        if self._mcr & MCR_LOOP:
            self._receive_looped_back(value)
        elif self._output is not None:
            self._output(ONE_BYTE[value])
        # The write acknowledged any THR-empty interrupt; the instant
        # transmission empties THR again, which raises a new one.
        self._thr_pending = True
        self._update_irq()

    def _write_ier(self, value: int) -> None:
        if self._lcr & LCR_DLAB:
            self._divisor = (self._divisor & 0x00FF) | (value << 8)
            return
        value &= IER_MASK
        changed = self._ier ^ value
        self._ier = value
        if changed & IER_THRI:
            # Enabling THRI while THR is empty (always, here) raises the
            # interrupt even if it was acknowledged before; Linux's THRE
            # probe and Windows rely on this (see QEMU).  Disabling drops it.
            self._thr_pending = bool(value & IER_THRI)
        self._update_irq()

    def _write_fcr(self, value: int) -> None:
        if (value ^ self._fcr) & FCR_FIFO_ENABLE:
            value |= FCR_CLEAR_RX | FCR_CLEAR_TX  # toggling FIFO mode flushes both
        if value & FCR_CLEAR_RX:
            self._clear_rx()
        if value & FCR_CLEAR_TX:
            self._thr_pending = True  # an emptied transmitter is a THRE event (as QEMU)
        self._fcr = value & FCR_STICKY
        if value & FCR_FIFO_ENABLE:
            self._rx_capacity = FIFO_DEPTH
            self._rx_trigger = RX_TRIGGER_LEVELS[value & FCR_TRIGGER_MASK]
        else:
            self._rx_capacity = 1
            self._rx_trigger = 1
        self._refill_rx()
        self._update_irq()

    def _write_lcr(self, value: int) -> None:
        self._lcr = value

    def _write_mcr(self, value: int) -> None:
        self._mcr = value & MCR_MASK
        self._update_modem_lines()
        self._refill_rx()  # leaving loopback reconnects the host input
        self._update_irq()

    def _write_scr(self, value: int) -> None:
        self._scr = value

    def _ignore_write(self, value: int) -> None:
        pass

    # ------------------------------------------------------------ internals

    def _update_modem_lines(self) -> None:
        """Recompute MSR's line bits and latch delta bits for changed lines."""
        mcr = self._mcr
        if mcr & MCR_LOOP:
            # Loopback wires DTR->DSR, RTS->CTS, OUT1->RI, OUT2->DCD.
            lines = ((mcr & MCR_DTR) << 5) | ((mcr & MCR_RTS) << 3) | ((mcr & (MCR_OUT1 | MCR_OUT2)) << 4)
        else:
            lines = MSR_HOST_LINES
        old = self._msr
        deltas = ((old ^ lines) & MSR_LINES) >> 4
        if lines & MSR_RI:
            deltas &= ~MSR_TERI  # TERI only latches on RI's trailing (1 -> 0) edge
        self._msr = lines | (old & MSR_DELTAS) | deltas

    def _receive_looped_back(self, value: int) -> None:
        rx = self._rx
        if len(rx) < self._rx_capacity:
            rx.append(value)
            return
        self._lsr_errors |= LSR_OE
        self.overruns += 1
        if self._rx_capacity == 1:
            rx[0] = value  # without FIFOs the new byte overwrites RBR
        # With FIFOs the FIFO keeps its contents and the new byte is lost.

    def _clear_rx(self) -> None:
        """FCR's RX reset. Deviation from the chip: bytes the host sent are
        not lost (a driver resets the FIFO while initialising, and host input
        may already be waiting); they go back to the host backlog. In
        loopback the FIFO holds looped-back bytes, which are discarded."""
        if not self._mcr & MCR_LOOP:
            self._backlog.extendleft(reversed(self._rx))
        self._rx.clear()

    def _refill_rx(self) -> None:
        """Move host backlog into the receiver while it has room."""
        if self._mcr & MCR_LOOP:
            return  # loopback disconnects the receiver from the host line
        rx, backlog = self._rx, self._backlog
        while backlog and len(rx) < self._rx_capacity:
            rx.append(backlog.popleft())

    def _interrupt_id(self) -> int:
        """Highest-priority pending and enabled interrupt (QEMU's serial_update_irq order)."""
        ier = self._ier
        if not ier:
            return IIR_NO_INT
        if ier & IER_RLSI and self._lsr_errors:
            return IIR_RLSI
        rx = self._rx
        if ier & IER_RDI and rx:
            # Like QEMU (and real chips), IER.RDI also gates the timeout.
            # Below the trigger level means no more input can arrive now:
            # _refill_rx keeps the FIFO full while the host has backlog,
            # except in loopback, where the host line is disconnected.
            return IIR_RDI if len(rx) >= self._rx_trigger else IIR_CTI
        if ier & IER_THRI and self._thr_pending:
            return IIR_THRI
        if ier & IER_MSI and self._msr & MSR_DELTAS:
            return IIR_MSI
        return IIR_NO_INT

    def _update_irq(self) -> None:
        self._irq_level = self._interrupt_id() != IIR_NO_INT

    def _settle(self) -> None:
        """The end of every locked entry point: publish to the fast path
        first, then move the interrupt line. A guest that takes the
        interrupt must not read, from the fast path, the state from before
        it (LSR without data ready, say), return, and wait for an edge that
        never comes."""
        self._publish()
        if self._irq_level != self._irq_told:
            self._irq_told = self._irq_level
            if self._irq is not None:
                self._irq(self._irq_level)

    def __repr__(self) -> str:
        return (
            f"Serial16550(tx={self.bytes_transmitted}, rx={self.bytes_received}, "
            f"rx_level={len(self._rx)}, backlog={len(self._backlog)})"
        )
