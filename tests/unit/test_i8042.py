"""Unit tests for pyvmm.devices.i8042 (PS/2 controller model, no KVM).

Port numbers, commands and expected register values are spelled out from
QEMU's hw/input/pckbd.c rather than imported, so the tests pin them down.
"""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pyvmm.arch.x86_64 import layout
from pyvmm.devices import Bus, I8042

KNOWN_COMMANDS = {
    0x20, 0x60, 0xA7, 0xA8, 0xA9, 0xAA, 0xAB, 0xAD, 0xAE,
    0xC0, 0xD0, 0xD1, 0xD2, 0xD3, 0xD4, 0xDD, 0xDF,
} | set(range(0xF0, 0x100))


class Controller:
    """An I8042 on a port bus, with the callbacks it made recorded."""

    def __init__(self):
        self.resets = 0
        self.irqs = []
        self.dev = I8042(on_reset=self._reset, set_irq=lambda line, level: self.irqs.append((line, level)))
        self.bus = Bus.port_io()
        self.bus.register(layout.I8042_DATA.base, layout.I8042_DATA.length, self.dev.data)
        self.bus.register(layout.I8042_COMMAND.base, layout.I8042_COMMAND.length, self.dev.command)

    def _reset(self):
        self.resets += 1

    def status(self):
        return self.bus.read(0x64, 1)[0]

    def data(self):
        return self.bus.read(0x60, 1)[0]

    def command(self, value):
        self.bus.write(0x64, bytes([value]))

    def write_data(self, value):
        self.bus.write(0x60, bytes([value]))

    def drain(self):
        out = []
        while self.status() & 0x01:
            out.append(self.data())
        return out


@pytest.fixture
def kbc():
    return Controller()


def test_views_are_registered_at_0x60_and_0x64_only(kbc):
    assert [(base, length) for base, length, _ in kbc.bus.ranges()] == [(0x60, 1), (0x64, 1)]
    assert kbc.bus.device_at(0x61) is None
    assert kbc.bus.device_at(0x63) is None


def test_status_after_reset_is_0x18_with_empty_output(kbc):
    assert kbc.status() == 0x18
    assert kbc.data() == 0  # nothing was ever queued


def test_self_test_answers_0x55_and_sets_the_system_flag(kbc):
    kbc.command(0xAA)
    assert kbc.status() == 0x1D  # OBF while the reply waits
    assert kbc.data() == 0x55
    assert kbc.status() == 0x1C  # QEMU's value after initialisation


def test_interface_tests_answer_zero(kbc):
    kbc.command(0xAB)
    assert kbc.drain() == [0x00]
    kbc.command(0xA9)
    assert kbc.drain() == [0x00]


def test_empty_data_port_returns_the_last_byte_read(kbc):
    kbc.command(0xAA)
    assert kbc.data() == 0x55
    assert kbc.data() == 0x55
    assert kbc.status() & 0x01 == 0


def test_command_byte_defaults_to_interrupts_enabled(kbc):
    kbc.command(0x20)
    assert kbc.drain() == [0x03]


@given(value=st.integers(0, 255))
def test_command_byte_round_trips(value):
    kbc = Controller()
    kbc.command(0x60)
    kbc.write_data(value)
    kbc.command(0x20)
    assert kbc.drain() == [value]
    assert kbc.resets == 0


def test_output_port_reads_0xcf(kbc):
    kbc.command(0xD0)
    assert kbc.drain() == [0xCF]


def test_a20_commands_toggle_output_port_bit_1(kbc):
    kbc.command(0xDD)
    kbc.command(0xD0)
    assert kbc.drain() == [0xCD]
    kbc.command(0xDF)
    kbc.command(0xD0)
    assert kbc.drain() == [0xCF]


def test_input_port_reads_0x80(kbc):
    kbc.command(0xC0)
    assert kbc.drain() == [0x80]


def test_pulse_reset_command_requests_a_reset(kbc):
    kbc.command(0xFE)
    assert kbc.resets == 1
    assert kbc.dev.reset_requests == 1


@pytest.mark.parametrize("command", range(0xF0, 0x100))
def test_pulse_commands_reset_only_when_bit_0_is_pulsed(command):
    kbc = Controller()
    kbc.command(command)
    assert kbc.resets == (0 if command & 1 else 1)
    assert kbc.status() == 0x18


def test_writing_output_port_with_reset_bit_clear_resets(kbc):
    kbc.command(0xD1)
    kbc.write_data(0xDF)  # bit 0 set: no reset
    assert kbc.resets == 0
    kbc.command(0xD0)
    assert kbc.drain() == [0xCF]
    kbc.command(0xD1)
    kbc.write_data(0xDE)
    assert kbc.resets == 1


@given(command=st.integers(0, 255).filter(lambda c: c not in KNOWN_COMMANDS))
def test_unknown_commands_are_ignored(command):
    kbc = Controller()
    kbc.command(command)
    assert kbc.status() == 0x18
    assert kbc.resets == 0
    assert kbc.irqs == []
    kbc.command(0x20)  # the command byte is untouched
    assert kbc.drain() == [0x03]


def test_disable_and_enable_keyboard_interface_change_the_command_byte(kbc):
    kbc.command(0xAD)
    kbc.command(0xA7)
    kbc.command(0x20)
    assert kbc.drain() == [0x33]
    kbc.command(0xAE)
    kbc.command(0xA8)
    kbc.command(0x20)
    assert kbc.drain() == [0x03]


# ------------------------------------------------------------- keyboard


def test_keyboard_reset_answers_ack_and_self_test_passed(kbc):
    kbc.write_data(0xFF)
    assert kbc.drain() == [0xFA, 0xAA]


def test_keyboard_get_id_depends_on_translation(kbc):
    kbc.write_data(0xF2)
    assert kbc.drain() == [0xFA, 0xAB, 0x83]
    kbc.command(0x60)
    kbc.write_data(0x43)  # translate on
    kbc.write_data(0xF2)
    assert kbc.drain() == [0xFA, 0xAB, 0x41]


def test_keyboard_echo_and_parameter_commands(kbc):
    kbc.write_data(0xEE)
    assert kbc.drain() == [0xEE]
    kbc.write_data(0xED)  # set LEDs, then the LED byte
    kbc.write_data(0x07)
    assert kbc.drain() == [0xFA, 0xFA]
    kbc.write_data(0xF0)  # scan code set query
    kbc.write_data(0x00)
    assert kbc.drain() == [0xFA, 0xFA, 0x02]


def test_keyboard_answers_resend_to_garbage(kbc):
    kbc.write_data(0x42)
    assert kbc.drain() == [0xFE]


# ------------------------------------------------------- output buffer, irq


def test_irq1_follows_keyboard_side_output(kbc):
    kbc.command(0xAA)
    assert kbc.irqs == [("keyboard", True)]
    kbc.data()
    assert kbc.irqs == [("keyboard", True), ("keyboard", False)]


def test_no_irq_when_command_byte_disables_it(kbc):
    kbc.command(0x60)
    kbc.write_data(0x00)
    kbc.command(0xAA)
    assert kbc.irqs == []
    assert kbc.status() & 0x01


def test_aux_output_buffer_sets_status_bit_5_and_irq12(kbc):
    kbc.command(0xD3)
    kbc.write_data(0x5A)
    assert kbc.status() == 0x18 | 0x21
    assert kbc.irqs == [("mouse", True)]
    assert kbc.data() == 0x5A
    assert kbc.status() == 0x18
    assert kbc.irqs == [("mouse", True), ("mouse", False)]


def test_bytes_for_the_absent_mouse_are_dropped(kbc):
    kbc.command(0xD4)
    kbc.write_data(0xF4)
    assert kbc.status() == 0x18


def test_output_queue_is_bounded(kbc):
    for value in range(40):
        kbc.command(0xD2)
        kbc.write_data(value)
    assert kbc.drain() == list(range(16))


def test_works_without_an_irq_callback():
    resets = []
    dev = I8042(lambda: resets.append(1))
    dev.command.write(0, b"\xaa")
    assert dev.data.read(0, 1) == b"\x55"
    dev.command.write(0, b"\xfe")
    assert resets == [1]


@st.composite
def port_accesses(draw):
    port = draw(st.sampled_from([0x5F, 0x60, 0x61, 0x63, 0x64, 0x65]))
    size = draw(st.sampled_from([1, 2, 4]))
    data = draw(st.binary(min_size=size, max_size=size)) if draw(st.booleans()) else None
    return port, size, data


@given(st.lists(port_accesses(), max_size=60))
def test_random_accesses_never_raise_and_reads_have_the_right_size(accesses):
    kbc = Controller()
    for port, size, data in accesses:
        if data is None:
            assert len(kbc.bus.read(port, size)) == size
        else:
            kbc.bus.write(port, data)
    assert kbc.status() & 0xDA == 0x18  # fixed bits never change
    for view in (kbc.dev.data, kbc.dev.command):  # also direct, wider than registered
        for size in (1, 2, 4):
            assert len(view.read(0, size)) == size
