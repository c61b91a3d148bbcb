"""The same access sequence, through the pure-Python harness and through KVM.

Each hypothesis-generated sequence runs twice against fresh, identical
devices: once through pyvmm.testing.drive (the bus called directly) and
once through pyvmm.testing.replay_on_kvm (the replay.bin guest performing
each access with the real instruction, the run loop turning the VM exits
into bus accesses).  Every read must return the same bytes, every access
must cause the same device accesses (device, offset, size, data), and the
devices must end in the same state.  The guest is emulated here, so the
sequences are short and the examples few.
"""

import pytest
from hypothesis import given, strategies as st

from pyvmm.devices import FwCfg, I8042, PciConfigAbsent, Serial16550
from pyvmm.devices.pc_testdev import PcTestDev
from pyvmm.testing import (MMIO, PIO, Access, Placement, access_sequences, accesses_for,
                           assert_same_reports, drive, fuzz_settings, replay_on_kvm)
from pyvmm.testing.replay import MARK_PORT, STATUS_DONE

pytestmark = pytest.mark.kvm

MAX_ACCESSES = 20
MMIO_BASE = 0xD0000000


class StatefulRecorder:
    """Logs every access; reads return a value that depends on everything
    before them, so any difference in order, size or data shows."""

    def __init__(self):
        self.log = []
        self.state = 0x12345678

    def read(self, offset, size):
        self.log.append(("read", offset, size))
        self.state = (self.state * 0x01000193 + offset * 8 + size) & 0xFFFFFFFFFFFFFFFF
        return self.state.to_bytes(8, "little")[:size]

    def write(self, offset, data):
        self.log.append(("write", offset, bytes(data)))
        for byte in data:
            self.state = ((self.state ^ byte) * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF


def recorders():
    return [Placement(PIO, 0x700, 8, StatefulRecorder(), "ports"),
            Placement(MMIO, MMIO_BASE + 0xFF8, 0x10, StatefulRecorder(), "mmio")]


def serial():
    uart = Serial16550(output=lambda data: None)
    uart.feed(b"replay!")
    return [Placement(PIO, 0x2F8, 8, uart, "com2")]


def pc_testdev():
    device = PcTestDev(set_irq=lambda line, level: None)
    return [Placement(PIO, 0x7E0, 8, device.ports, "testdev ports"),
            Placement(PIO, 0x7A0, 24, device.irq_lines, "testdev irq lines"),
            Placement(MMIO, MMIO_BASE, 0x2000, device.iomem, "testdev iomem")]


def platform_like():
    i8042 = I8042(on_reset=lambda: None)
    return [Placement(PIO, 0x760, 1, i8042.data, "i8042 data"),
            Placement(PIO, 0x764, 1, i8042.command, "i8042 command"),
            Placement(PIO, 0x710, 2, FwCfg(16 << 20, 1, "x"), "fw_cfg"),
            Placement(PIO, 0x7C8, 8, PciConfigAbsent(), "pci")]


BENCHES = {"recorders": recorders, "serial": serial, "testdev": pc_testdev, "platform": platform_like}


def device_state(placements):
    """What each device ended with, compared across the two paths."""
    state = {}
    for placement in placements:
        device = placement.device
        if isinstance(device, StatefulRecorder):
            state[placement.name] = (device.log, device.state)
        elif isinstance(device, Serial16550):
            state[placement.name] = (device.register_snapshot(), device.rx_level,
                                     device.pending_input(), device.bytes_transmitted)
        elif isinstance(device, FwCfg):
            state[placement.name] = device.selected_key
        elif isinstance(device, PciConfigAbsent):
            state[placement.name] = (device.config_address, device.config_reads, device.config_writes)
        elif placement.name == "testdev iomem":
            state[placement.name] = bytes(device.read(0, 8)) + bytes(device.read(0xFF8, 8))
    return state


@pytest.mark.parametrize("bench", sorted(BENCHES))
@fuzz_settings(max_examples=20)
@given(data=st.data())
def test_harness_and_kvm_agree(bench, data):
    make = BENCHES[bench]
    accesses = data.draw(access_sequences(accesses_for(make(), margin=8), max_size=MAX_ACCESSES),
                         label="accesses")
    in_python = make()
    on_kvm = make()
    expected = drive(in_python, accesses)
    actual = replay_on_kvm(accesses, on_kvm)
    assert actual.run.status == STATUS_DONE
    assert_same_reports(expected, actual)
    assert device_state(in_python) == device_state(on_kvm)


def uart_state(uart, output):
    return (uart.register_snapshot(), uart.rx_level, uart.pending_input(), uart.bytes_transmitted,
            uart.bytes_received, uart.overruns, bytes(output))


@pytest.mark.parametrize("exit_path", ["python", "fast"])
@fuzz_settings(max_examples=20)
@given(accesses=access_sequences(accesses_for([(PIO, 0x3F8, 8)], margin=8), max_size=MAX_ACCESSES),
       fed=st.binary(max_size=24))
def test_the_machines_own_uart_agrees_with_the_harness(exit_path, accesses, fed):
    """COM1 as the Machine wires it (and, with exit_path="fast", as the C
    fast path answers THR writes and LSR reads) against a fresh model."""
    output = bytearray()
    model = Serial16550(output=output.extend)
    model.feed(fed)
    expected = drive([Placement(PIO, 0x3F8, 8, model, "com1")], accesses, sentinels=False)
    actual = replay_on_kvm(
        accesses, (), check=False, vm_config={"exit_path": exit_path},
        setup=lambda machine: machine.serial.feed(fed),
        inspect=lambda machine: uart_state(machine.serial, machine.serial_output))
    assert actual.run.status == STATUS_DONE
    assert actual.reads() == expected.reads()
    assert actual.inspected == uart_state(model, output)


def test_replay_covers_every_instruction_form():
    """One of each: in/out 1/2/4, rep ins/outs 1/2/4, MMIO 1/2/4/8 both ways,
    page-crossing MMIO, and a read nobody answers."""
    accesses = []
    for size in (1, 2, 4):
        accesses.append(Access(PIO, "write", 0x700, size, data=bytes(range(1, size + 1))))
        accesses.append(Access(PIO, "read", 0x704, size))
        accesses.append(Access(PIO, "write", 0x702, size, count=3, data=bytes(range(3 * size))))
        accesses.append(Access(PIO, "read", 0x701, size, count=2))
    for size in (1, 2, 4, 8):
        accesses.append(Access(MMIO, "write", MMIO_BASE + 0xFF8, size, data=bytes(range(7, 7 + size))))
        accesses.append(Access(MMIO, "read", MMIO_BASE + 0x1000, size))
    accesses.append(Access(MMIO, "write", MMIO_BASE + 0xFFE, 4, data=b"abcd"))   # crosses a page
    accesses.append(Access(MMIO, "read", MMIO_BASE + 0xFFD, 8))                  # crosses a page
    accesses.append(Access(PIO, "read", 0x6F0, 4))                               # nobody there
    in_python, on_kvm = recorders(), recorders()
    expected = drive(in_python, accesses)
    actual = replay_on_kvm(accesses, on_kvm)
    assert_same_reports(expected, actual)
    assert device_state(in_python) == device_state(on_kvm)
    page_split = actual.outcomes[-2].events
    assert [(event.offset, event.size) for event in page_split] == [(5, 3), (8, 5)]
    assert actual.reads()[-1] == b"\xff" * 4


def test_replay_refuses_what_the_guest_cannot_do():
    with pytest.raises(ValueError, match="below 4 GiB"):
        replay_on_kvm([Access(MMIO, "read", 1 << 32, 4)], recorders())
    with pytest.raises(ValueError, match="guest RAM"):
        replay_on_kvm([Access(MMIO, "read", 0x1000, 4)], recorders())
    with pytest.raises(ValueError, match="marker port"):
        replay_on_kvm([Access(PIO, "read", MARK_PORT, 1)], recorders())
