"""Unit tests for pyvmm.devices.serial (16550A UART model, no KVM).

Register offsets and bit values are spelled out from the 16550 datasheet
here rather than imported, so the tests also pin down the model's constants.
"""

import threading
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pyvmm.devices import Serial16550
from pyvmm.devices import serial as serial_module

RBR = THR = DLL = 0
IER = DLM = 1
IIR = FCR = 2
LCR = 3
MCR = 4
LSR = 5
MSR = 6
SCR = 7

LSR_DR = 0x01
LSR_IDLE = 0x60  # THRE | TEMT
MSR_HOST_LINES = 0xB0  # DCD | DSR | CTS
MCR_LOOP = 0x10


class Uart:
    """A Serial16550 with byte-register helpers and a record of what it emitted."""

    def __init__(self):
        self.output = bytearray()
        self.irq_changes = []
        self.dev = Serial16550(output=self.output.extend, irq=self.irq_changes.append)

    def read(self, reg):
        return self.dev.read(reg, 1)[0]

    def write(self, reg, value):
        self.dev.write(reg, bytes([value]))

    def drain(self):
        """Read RBR while LSR.DR is set, like a polling guest driver."""
        received = bytearray()
        while self.read(LSR) & LSR_DR:
            received.append(self.read(RBR))
        return bytes(received)


@pytest.fixture
def uart():
    return Uart()


# Loopback wiring from the datasheet: DTR->DSR, RTS->CTS, OUT1->RI, OUT2->DCD.
LOOPBACK_WIRING = {0x01: 0x20, 0x02: 0x10, 0x04: 0x40, 0x08: 0x80}


def looped_lines(mcr_outputs):
    return sum(msr_bit for mcr_bit, msr_bit in LOOPBACK_WIRING.items() if mcr_outputs & mcr_bit)


def expected_deltas(old_lines, new_lines):
    changed = old_lines ^ new_lines
    deltas = 0
    if changed & 0x10:
        deltas |= 0x01  # DCTS
    if changed & 0x20:
        deltas |= 0x02  # DDSR
    if old_lines & 0x40 and not new_lines & 0x40:
        deltas |= 0x04  # TERI: trailing edge of RI only
    if changed & 0x80:
        deltas |= 0x08  # DDCD
    return deltas


# -------------------------------------------------------------- registers


def test_reset_values(uart):
    assert uart.read(IER) == 0x00
    assert uart.read(IIR) == 0x01
    assert uart.read(LCR) == 0x00
    assert uart.read(MCR) == 0x00
    assert uart.read(LSR) == 0x60
    assert uart.read(MSR) == 0xB0
    assert uart.read(SCR) == 0x00
    uart.write(LCR, 0x80)
    assert (uart.read(DLL), uart.read(DLM)) == (0x0C, 0x00)
    assert uart.irq_changes == []
    assert uart.output == b""


def test_divisor_latch_reads_back_and_shadows_data_and_ier(uart):
    uart.write(IER, 0x05)
    uart.write(LCR, 0x83)
    uart.write(DLL, 0x01)
    uart.write(DLM, 0x02)
    assert uart.read(DLL) == 0x01
    assert uart.read(DLM) == 0x02
    assert uart.read(LCR) == 0x83
    assert uart.output == b""  # DLL write did not transmit
    uart.write(LCR, 0x03)
    assert uart.read(IER) == 0x05  # IER untouched by the DLM write
    uart.write(THR, ord("x"))
    assert uart.output == b"x"
    uart.write(LCR, 0x80)
    assert (uart.read(DLL), uart.read(DLM)) == (0x01, 0x02)


@given(value=st.integers(0, 255))
def test_scratch_and_lcr_round_trip(value):
    uart = Uart()
    uart.write(SCR, value)
    uart.write(LCR, value)
    assert uart.read(SCR) == value
    assert uart.read(LCR) == value


@given(value=st.integers(0, 255))
def test_ier_keeps_four_bits_and_mcr_five(value):
    uart = Uart()
    uart.write(IER, value)
    uart.write(MCR, value)
    assert uart.read(IER) == value & 0x0F
    assert uart.read(MCR) == value & 0x1F


def test_lsr_and_msr_writes_are_ignored(uart):
    uart.write(LSR, 0x00)
    uart.write(MSR, 0x00)
    assert uart.read(LSR) == 0x60
    assert uart.read(MSR) == 0xB0


# ------------------------------------------------------------------- FIFO


def test_fifo_enable_shows_in_iir_top_bits(uart):
    uart.write(FCR, 0x01)
    assert uart.read(IIR) == 0xC1
    uart.write(FCR, 0x00)
    assert uart.read(IIR) == 0x01


def test_fcr_clear_rx_discards_looped_back_bytes(uart):
    uart.write(FCR, 0x01)
    uart.write(MCR, 0x10)
    uart.write(THR, b"a"[0])
    uart.write(THR, b"b"[0])
    assert uart.dev.rx_level == 2
    uart.write(FCR, 0x03)
    assert uart.read(LSR) == 0x60
    assert uart.dev.rx_level == 0


def test_fcr_clear_rx_never_loses_host_input(uart):
    # A driver resets the FIFO while it initialises; input the host already
    # sent must survive it (a documented deviation from the chip).
    uart.write(FCR, 0x01)
    uart.dev.feed(bytes(range(20)))
    assert uart.dev.rx_level == 16 and uart.dev.pending_input() == 4
    uart.write(FCR, 0x03)
    assert uart.drain() == bytes(range(20))


@pytest.mark.parametrize("new_fcr", [0x01, 0x00])
def test_toggling_fifo_mode_flushes_the_receiver(new_fcr):
    uart = Uart()
    uart.write(FCR, new_fcr ^ 0x01)
    uart.write(MCR, MCR_LOOP)  # loopback: no host refill after the flush
    uart.write(THR, ord("a"))
    assert uart.dev.rx_level == 1
    uart.write(FCR, new_fcr)
    assert uart.dev.rx_level == 0
    assert uart.read(LSR) == 0x60


@pytest.mark.parametrize("trigger_bits,level", [(0x00, 1), (0x40, 4), (0x80, 8), (0xC0, 14)])
def test_rx_trigger_levels(trigger_bits, level):
    uart = Uart()
    uart.write(FCR, trigger_bits | 0x01)
    uart.write(IER, 0x01)
    uart.dev.feed(bytes(level - 1))
    # Below the trigger level with no more input coming: character timeout.
    assert uart.read(IIR) == (0xC1 if level == 1 else 0xCC)
    uart.dev.feed(b"\x00")
    assert uart.read(IIR) == 0xC4
    assert uart.dev.irq_level


def test_character_timeout_clears_once_fifo_is_drained(uart):
    uart.write(FCR, 0x81)  # trigger level 8
    uart.write(IER, 0x01)
    uart.dev.feed(b"abc")
    assert uart.read(IIR) == 0xCC
    assert uart.read(RBR) == ord("a")
    assert uart.read(IIR) == 0xCC
    assert uart.drain() == b"bc"
    assert uart.read(IIR) == 0xC1
    assert not uart.dev.irq_level


def test_timeout_in_loopback_ignores_waiting_host_input(uart):
    # Loopback disconnects the host line, so held host bytes are not "coming".
    uart.write(FCR, 0x41)
    uart.write(MCR, MCR_LOOP)
    uart.write(IER, 0x01)
    uart.dev.feed(b"host input")
    uart.write(THR, ord("L"))
    assert uart.read(IIR) == 0xCC


def test_fifo_holds_16_bytes_and_overruns_in_loopback(uart):
    uart.write(FCR, 0x01)
    uart.write(MCR, MCR_LOOP)
    for value in range(17):
        uart.write(THR, value)
    assert uart.dev.rx_level == 16
    assert uart.read(LSR) == 0x63  # DR | OE | THRE | TEMT
    assert uart.read(LSR) == 0x61  # reading LSR cleared OE
    assert uart.drain() == bytes(range(16))  # the FIFO kept its contents
    assert uart.dev.overruns == 1
    assert uart.output == b""


def test_without_fifo_receiver_holds_one_byte_and_overrun_overwrites(uart):
    uart.write(MCR, MCR_LOOP)
    uart.write(THR, ord("a"))
    assert uart.read(LSR) == 0x61
    uart.write(THR, ord("b"))
    assert uart.read(LSR) == 0x63
    assert uart.read(RBR) == ord("b")
    assert uart.read(LSR) == 0x60


def test_reading_empty_rbr_returns_zero_and_changes_nothing(uart):
    assert uart.read(RBR) == 0
    assert uart.read(LSR) == 0x60
    assert uart.dev.bytes_received == 0


# ------------------------------------------------------------------- LSR


def test_thre_and_temt_are_set_again_right_after_a_thr_write(uart):
    for char in b"hello":
        assert uart.read(LSR) & LSR_IDLE == LSR_IDLE
        uart.write(THR, char)
        assert uart.read(LSR) & LSR_IDLE == LSR_IDLE
    assert uart.output == b"hello"


def test_lsr_dr_tracks_received_data(uart):
    assert not uart.read(LSR) & LSR_DR
    uart.dev.feed(b"ab")
    assert uart.read(LSR) == 0x61
    uart.read(RBR)
    assert uart.read(LSR) == 0x61  # 'b' moved into RBR
    uart.read(RBR)
    assert uart.read(LSR) == 0x60


# ------------------------------------------------------------ interrupts


def test_iir_reports_sources_in_priority_order(uart):
    uart.write(IER, 0x0F)  # THRI 0 -> 1: THR-empty pending
    uart.write(MCR, MCR_LOOP)  # modem lines 0xb0 -> 0x00: MSR deltas
    uart.write(THR, 0x41)  # looped back into RBR: data available
    uart.write(THR, 0x42)  # overrun: line status
    assert uart.read(IIR) == 0x06
    assert uart.dev.irq_level
    assert uart.read(LSR) == 0x63
    assert uart.read(IIR) == 0x04
    assert uart.read(RBR) == 0x42
    assert uart.read(IIR) == 0x02  # this read acknowledges THR-empty
    assert uart.read(IIR) == 0x00
    assert uart.read(MSR) == 0x0B  # DDCD | DDSR | DCTS, all lines low
    assert uart.read(IIR) == 0x01
    assert not uart.dev.irq_level
    assert uart.irq_changes == [True, False]


def test_line_status_interrupt_needs_ier_bit2(uart):
    uart.write(MCR, MCR_LOOP)
    uart.write(IER, 0x01)
    uart.write(THR, 1)
    uart.write(THR, 2)  # overrun, but RLSI disabled
    assert uart.read(IIR) == 0x04


def test_character_timeout_outranks_thr_empty(uart):
    uart.write(FCR, 0x41)
    uart.write(IER, 0x03)
    uart.dev.feed(b"x")
    assert uart.read(IIR) == 0xCC
    assert uart.read(RBR) == ord("x")
    assert uart.read(IIR) == 0xC2
    assert uart.read(IIR) == 0xC1


def test_iir_read_acknowledges_only_thr_empty(uart):
    uart.write(IER, 0x03)
    uart.dev.feed(b"z")
    assert uart.read(IIR) == 0x04
    assert uart.read(IIR) == 0x04  # data interrupt persists until RBR is read
    assert uart.read(RBR) == ord("z")
    assert uart.read(IIR) == 0x02  # THR-empty survived the earlier IIR reads
    assert uart.read(IIR) == 0x01


def test_enabling_thri_raises_thr_empty_until_iir_is_read(uart):
    uart.write(IER, 0x02)
    assert uart.irq_changes == [True]
    assert uart.read(IIR) == 0x02
    assert uart.irq_changes == [True, False]
    assert uart.read(IIR) == 0x01
    uart.write(IER, 0x02)  # no 0 -> 1 edge: stays acknowledged
    assert uart.read(IIR) == 0x01
    uart.write(IER, 0x00)
    uart.write(IER, 0x02)
    assert uart.read(IIR) == 0x02


def test_thr_write_raises_thr_empty(uart):
    uart.write(IER, 0x02)
    uart.read(IIR)
    assert not uart.dev.irq_level
    uart.write(THR, ord("a"))
    assert uart.dev.irq_level
    assert uart.read(IIR) == 0x02


def test_thr_write_with_thri_disabled_raises_nothing(uart):
    uart.write(THR, ord("a"))
    assert uart.irq_changes == []
    assert uart.read(IIR) == 0x01


def test_disabling_thri_drops_pending_thr_empty(uart):
    uart.write(IER, 0x02)
    uart.write(IER, 0x00)
    assert uart.irq_changes == [True, False]
    assert uart.read(IIR) == 0x01


def test_clearing_tx_fifo_raises_thr_empty_like_qemu(uart):
    uart.write(IER, 0x02)
    uart.read(IIR)
    uart.write(FCR, 0x04)
    assert uart.read(IIR) == 0x02


def test_irq_callback_only_sees_level_changes(uart):
    uart.write(IER, 0x01)  # nothing to report yet
    assert uart.irq_changes == []
    uart.dev.feed(b"a")
    uart.dev.feed(b"b")  # line already high
    uart.write(SCR, 1)
    assert uart.irq_changes == [True]
    uart.read(RBR)  # 'b' replaces 'a': still high
    assert uart.irq_changes == [True]
    uart.read(RBR)
    assert uart.irq_changes == [True, False]
    uart.read(RBR)
    uart.read(IIR)
    assert uart.irq_changes == [True, False]


def test_works_without_callbacks():
    dev = Serial16550()
    dev.write(IER, b"\x0f")
    dev.write(THR, b"x")
    dev.feed(b"y")
    assert dev.irq_level
    assert dev.read(RBR, 1) == b"y"


# -------------------------------------------------------- modem / loopback


@given(outputs=st.integers(0, 15))
def test_loopback_wires_mcr_outputs_to_msr_lines(outputs):
    uart = Uart()
    uart.write(MCR, MCR_LOOP | outputs)
    assert uart.read(MSR) & 0xF0 == looped_lines(outputs)


@given(first=st.integers(0, 15), second=st.integers(0, 15))
def test_loopback_msr_delta_bits(first, second):
    uart = Uart()
    uart.write(MCR, MCR_LOOP | first)
    assert uart.read(MSR) == looped_lines(first) | expected_deltas(MSR_HOST_LINES, looped_lines(first))
    assert uart.read(MSR) == looped_lines(first)  # reading cleared the deltas
    uart.write(MCR, MCR_LOOP | second)
    assert uart.read(MSR) == looped_lines(second) | expected_deltas(looped_lines(first), looped_lines(second))
    uart.write(MCR, 0)
    assert uart.read(MSR) == MSR_HOST_LINES | expected_deltas(looped_lines(second), MSR_HOST_LINES)


def test_teri_latches_only_on_ring_trailing_edge(uart):
    uart.write(MCR, MCR_LOOP)
    uart.read(MSR)
    uart.write(MCR, MCR_LOOP | 0x04)  # OUT1 -> RI rises
    assert uart.read(MSR) == 0x40
    uart.write(MCR, MCR_LOOP)  # RI falls
    assert uart.read(MSR) == 0x04


def test_msr_deltas_accumulate_until_read(uart):
    uart.write(MCR, MCR_LOOP)
    uart.read(MSR)
    uart.write(MCR, MCR_LOOP | 0x02)
    uart.write(MCR, MCR_LOOP)
    assert uart.read(MSR) == 0x01  # CTS went up and down: DCTS still latched


def test_modem_status_interrupt(uart):
    uart.write(MCR, MCR_LOOP)
    uart.read(MSR)
    uart.write(IER, 0x08)
    assert not uart.dev.irq_level
    uart.write(MCR, MCR_LOOP | 0x02)
    assert uart.dev.irq_level
    assert uart.read(IIR) == 0x00
    assert uart.read(MSR) == 0x11
    assert not uart.dev.irq_level
    assert uart.read(IIR) == 0x01


def test_loopback_keeps_bytes_off_the_output_and_holds_host_input(uart):
    uart.write(MCR, MCR_LOOP)
    uart.dev.feed(b"host")
    assert uart.dev.pending_input() == 4 and uart.dev.rx_level == 0
    uart.write(THR, ord("L"))
    assert uart.output == b""
    assert uart.drain() == b"L"
    uart.write(MCR, 0)
    assert uart.drain() == b"host"
    assert uart.dev.bytes_transmitted == 1


# ---------------------------------------------------------- host traffic


@pytest.mark.parametrize("fcr", [0x00, 0x01, 0xC1])
def test_feed_larger_than_the_fifo_arrives_in_order(fcr):
    uart = Uart()
    uart.write(FCR, fcr)
    payload = bytes(range(256)) * 4
    for start in range(0, len(payload), 300):
        uart.dev.feed(payload[start : start + 300])
    assert uart.drain() == payload
    assert uart.dev.pending_input() == 0
    assert uart.dev.bytes_received == len(payload)


def test_host_backlog_is_capped_and_drops_are_counted(uart, monkeypatch):
    monkeypatch.setattr(serial_module, "HOST_BACKLOG_LIMIT", 10)
    uart.dev.feed(bytes(range(15)))
    assert uart.dev.input_bytes_dropped == 5
    assert uart.dev.rx_level == 1 and uart.dev.pending_input() == 9
    assert uart.drain() == bytes(range(10))


@given(data=st.binary(max_size=64))
def test_output_receives_exactly_the_bytes_written(data):
    uart = Uart()
    for value in data:
        uart.write(THR, value)
    assert uart.output == data
    assert uart.dev.bytes_transmitted == len(data)


def test_feed_from_another_thread_is_delivered_in_order(uart):
    uart.write(FCR, 0x01)
    payload = bytes(range(256)) * 40

    def producer():
        for start in range(0, len(payload), 37):
            uart.dev.feed(payload[start : start + 37])

    thread = threading.Thread(target=producer)
    thread.start()
    received = bytearray()
    deadline = time.monotonic() + 10
    while len(received) < len(payload) and time.monotonic() < deadline:
        received += uart.drain()
    thread.join()
    assert received == payload


# ----------------------------------------------------------- access sizes


def test_wide_accesses_are_split_into_byte_accesses(uart):
    uart.dev.write(6, b"\x00\x5a")  # MSR (ignored), SCR
    assert uart.read(SCR) == 0x5A
    uart.dev.write(3, b"\x03\x0b")  # LCR, MCR
    assert uart.dev.read(3, 2) == b"\x03\x0b"
    uart.dev.write(0, b"hi")  # THR 'h', IER 0x69 & 0x0f
    assert uart.output == b"h"
    assert uart.read(IER) == 0x09
    assert uart.dev.read(4, 4) == bytes([0x0B, 0x60, 0xB0, 0x5A])


def test_offsets_past_the_uart_do_not_raise(uart):
    before = uart.dev.register_snapshot()
    assert uart.dev.read(6, 4) == bytes([0xB0, 0x00, 0xFF, 0xFF])
    assert uart.dev.read(8, 2) == b"\xff\xff"
    uart.dev.write(8, b"\x01")
    uart.dev.write(100, b"\x01\x02\x03\x04")
    assert uart.dev.register_snapshot() == before


def test_reset_restores_registers_and_lowers_irq(uart):
    fresh = Serial16550().register_snapshot()
    uart.write(FCR, 0xC1)
    uart.write(IER, 0x0F)
    uart.write(LCR, 0x9B)
    uart.write(MCR, 0x1F)
    uart.write(SCR, 0x77)
    uart.write(THR, ord("a"))
    assert uart.dev.irq_level
    uart.dev.reset()
    assert uart.dev.register_snapshot() == fresh
    assert not uart.dev.irq_level
    assert uart.irq_changes[-1] is False


# --------------------------------------------------------------- properties


@st.composite
def register_access(draw):
    kind = draw(st.sampled_from(["read", "write", "feed"]))
    if kind == "feed":
        return ("feed", draw(st.binary(max_size=40)))
    size = draw(st.sampled_from([1, 2, 4]))
    offset = draw(st.integers(0, 8 - size))
    if kind == "read":
        return ("read", offset, size)
    return ("write", offset, draw(st.binary(min_size=size, max_size=size)))


def assert_consistent(uart):
    dev = uart.dev
    snap = dev.register_snapshot()
    lsr, iir = snap["LSR"], snap["IIR"]
    fifo_enabled = snap["FCR"] & 0x01
    capacity = 16 if fifo_enabled else 1
    interrupt_id = iir & 0x0F

    assert lsr & LSR_IDLE == LSR_IDLE
    assert bool(lsr & LSR_DR) == (dev.rx_level > 0)
    assert dev.rx_level <= capacity
    assert iir & 0xF0 == (0xC0 if fifo_enabled else 0x00)
    assert interrupt_id in (0x06, 0x0C, 0x04, 0x02, 0x00, 0x01)
    if interrupt_id in (0x04, 0x0C):
        assert lsr & LSR_DR
    if interrupt_id == 0x06:
        assert lsr & 0x1E
    assert (interrupt_id == 0x01) == (not dev.irq_level)
    # The callback saw alternating levels, starting high, ending at the current level.
    changes = uart.irq_changes
    assert all(a != b for a, b in zip(changes, changes[1:]))
    assert (changes[-1] if changes else False) == dev.irq_level
    # Host input only waits while the receiver is full or in loopback.
    if dev.pending_input() and not snap["MCR"] & MCR_LOOP:
        assert dev.rx_level == capacity


@settings(deadline=None, max_examples=300)
@given(ops=st.lists(register_access(), max_size=60))
def test_random_register_traffic_keeps_state_consistent(ops):
    uart = Uart()
    expected_output = bytearray()
    for op in ops:
        if op[0] == "feed":
            uart.dev.feed(op[1])
        elif op[0] == "read":
            _, offset, size = op
            assert len(uart.dev.read(offset, size)) == size
        else:
            _, offset, data = op
            snap = uart.dev.register_snapshot()
            if offset == THR and not snap["LCR"] & 0x80 and not snap["MCR"] & MCR_LOOP:
                expected_output.append(data[0])
            uart.dev.write(offset, data)
        assert_consistent(uart)
    assert uart.output == expected_output


@settings(deadline=None)
@given(
    fcr=st.sampled_from([0x00, 0x01, 0x41, 0x81, 0xC1, 0x07]),
    ier=st.integers(0, 15),
    ops=st.lists(
        st.one_of(
            st.tuples(st.just("feed"), st.binary(max_size=50)),
            st.tuples(st.just("poll"), st.none()),
            st.tuples(st.just("isr"), st.none()),
            st.tuples(st.just("trigger"), st.sampled_from([0x00, 0x40, 0x80, 0xC0])),
        ),
        max_size=60,
    ),
)
def test_fed_bytes_reach_the_guest_in_order_without_loss_or_duplication(fcr, ier, ops):
    uart = Uart()
    uart.write(FCR, fcr)
    uart.write(IER, ier)
    fed, received = bytearray(), bytearray()
    for kind, arg in ops:
        if kind == "feed":
            uart.dev.feed(arg)
            fed += arg
        elif kind == "poll":  # polling driver: LSR, then RBR if data ready
            if uart.read(LSR) & LSR_DR:
                received.append(uart.read(RBR))
        elif kind == "isr":  # interrupt driver: IIR says data, so RBR has some
            if uart.read(IIR) & 0x0F in (0x04, 0x0C):
                received.append(uart.read(RBR))
        else:  # new trigger level, same FIFO mode, no clear bits: keeps data
            uart.write(FCR, (fcr & 0x01) | arg)
    received += uart.drain()
    assert received == fed
    assert uart.dev.bytes_received == len(fed)


# A fast path answers LSR reads from what the UART last published, without
# its lock. The interrupt line must therefore rise only once the UART has
# published the state that explains it: a guest whose handler runs at once
# (hardware virtualisation) would otherwise read a stale LSR (no data),
# return, and never see another edge for data still waiting.

class PublishedUart:
    """A Serial16550 attached to a context whose irq checks what was published."""

    def __init__(self):
        self.published_lsr = None
        self.stale_rises = []
        self.dev = Serial16550(output=lambda data: None)
        uart = self

        class Registers:
            def allow_posted(self, offset, allowed):
                pass

            def publish(self, offset, value):
                assert offset == LSR
                uart.published_lsr = value

        class Irq:
            def set(self, level):
                current = uart.dev.lsr_without_side_effects()
                if level and uart.published_lsr != current:
                    uart.stale_rises.append((uart.published_lsr, current))

        class Context:
            irq = Irq()
            registers = Registers()

        self.dev.attach(Context())


@given(st.integers(0, 15), st.lists(st.one_of(
    st.binary(min_size=1, max_size=20).map(lambda data: ("feed", data)),
    st.tuples(st.just("write"), st.integers(0, 7), st.integers(0, 255)),
    st.tuples(st.just("read"), st.integers(0, 7)),
    st.binary(min_size=1, max_size=8).map(lambda data: ("write_many", data))), max_size=30))
@settings(max_examples=300, deadline=None)
def test_interrupt_rises_only_after_the_state_is_published(ier, events):
    uart = PublishedUart()
    uart.dev.write(IER, bytes([ier]))
    for event in events:
        if event[0] == "feed":
            uart.dev.feed(event[1])
        elif event[0] == "write":
            uart.dev.write(event[1], bytes([event[2]]))
        elif event[0] == "read":
            uart.dev.read(event[1], 1)
        else:
            uart.dev.write_many(THR, 1, event[1])
    assert uart.stale_rises == []


def test_input_interrupt_sees_the_published_data_ready():
    uart = PublishedUart()
    uart.dev.write(IER, b"\x01")                   # received data available
    uart.dev.feed(b"a")
    assert uart.dev.irq_level and uart.stale_rises == []
    assert uart.published_lsr & LSR_DR
