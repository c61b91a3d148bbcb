"""Unit tests for pyvmm.devices.pc_testdev (QEMU pc-testdev model, no KVM)."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pyvmm.arch.x86_64 import layout
from pyvmm.devices import Bus, BusError, DebugConsole, PcTestDev
from pyvmm.devices.pc_testdev import IOMEM_SIZE, IRQ_LINE_COUNT, PORTS_LENGTH


def placements(dev):
    """(bus, window, device) of each view, where the PC platform puts them."""
    return [("pio", layout.PC_TESTDEV_PORTS, dev.ports),
            ("pio", layout.PC_TESTDEV_IRQ_LINES, dev.irq_lines),
            ("mmio", layout.PC_TESTDEV_MMIO, dev.iomem)]


class Machine:
    """A PcTestDev on port and MMIO buses, with its callbacks recorded."""

    def __init__(self, with_flush=True):
        self.irqs = []
        self.flushes = []
        self.dev = PcTestDev(
            lambda line, level: self.irqs.append((line, level)),
            flush_page=self.flushes.append if with_flush else None,
        )
        self.pio = Bus.port_io()
        self.mmio = Bus.mmio()
        for bus, window, device in placements(self.dev):
            getattr(self, bus).register(window.base, window.length, device)


def test_ranges_match_qemu_addresses_and_the_devices_sizes():
    assert [tuple(window) for _, window, _ in placements(PcTestDev(lambda line, level: None))] == [
        (0xE0, PORTS_LENGTH), (0x2000, IRQ_LINE_COUNT), (0xFF000000, IOMEM_SIZE)]
    assert (PORTS_LENGTH, IRQ_LINE_COUNT, IOMEM_SIZE) == (8, 24, 0x10000)


def test_port_ranges_leave_room_for_debugcon_but_not_for_the_byte_mirror():
    machine = Machine()
    machine.pio.register(0xE9, 1, DebugConsole(lambda data: None))
    assert machine.pio.device_at(0xE9) is not None and machine.pio.device_at(0xE7) is machine.dev.ports
    with pytest.raises(BusError):
        machine.pio.register(0xE8, 4, machine.dev.byte_port)


def test_scratch_reads_back_the_last_dword():
    machine = Machine()
    machine.pio.write(0xE0, b"\x78\x56\x34\x12")
    assert machine.pio.read(0xE0, 4) == b"\x78\x56\x34\x12"
    assert machine.pio.read(0xE2, 2) == b"\x34\x12"
    assert machine.pio.read(0xE1, 1) == b"\x56"
    assert machine.dev.scratch.value == 0x12345678


@given(
    st.lists(
        st.tuples(st.sampled_from([1, 2, 4]), st.integers(0, 3), st.binary(min_size=4, max_size=4), st.booleans()),
        max_size=40,
    )
)
def test_scratch_behaves_as_four_bytes_of_memory(accesses):
    machine = Machine()
    model = bytearray(4)
    for size, offset, data, is_write in accesses:
        if offset + size > 4:
            continue
        if is_write:
            machine.pio.write(0xE0 + offset, data[:size])
            model[offset : offset + size] = data[:size]
        else:
            assert machine.pio.read(0xE0 + offset, size) == bytes(model[offset : offset + size])


def test_byte_port_mirrors_the_scratch_register():
    dev = PcTestDev(lambda line, level: None)
    dev.ports.write(0, b"\xaa\xbb\xcc\xdd")
    assert dev.byte_port.read(2, 1) == b"\xcc"
    dev.byte_port.write(0, b"\x11")
    assert dev.ports.read(0, 4) == b"\x11\xbb\xcc\xdd"


def test_flush_port_passes_the_page_address():
    machine = Machine()
    machine.pio.write(0xE4, (0x00123ABC).to_bytes(4, "little"))
    assert machine.flushes == [0x00123000]
    assert machine.dev.ports.flush_requests == 1


def test_flush_port_accepts_only_dword_writes_and_is_write_only():
    machine = Machine()
    machine.pio.write(0xE4, b"\x00\x10")
    machine.pio.write(0xE4, b"\x00")
    machine.pio.write(0xE6, b"\x00\x10")
    assert machine.flushes == []
    assert machine.pio.read(0xE4, 4) == b"\xff" * 4
    assert machine.pio.read(0xE0, 4) == b"\0" * 4  # the scratch register is untouched


def test_flush_without_callback_is_a_no_op():
    machine = Machine(with_flush=False)
    machine.pio.write(0xE4, b"\x00\x10\x00\x00")
    assert machine.dev.ports.flush_requests == 1


@given(line=st.integers(0, 23), value=st.integers(0, 255))
def test_irq_port_sets_the_line_level(line, value):
    machine = Machine()
    machine.pio.write(0x2000 + line, bytes([value]))
    assert machine.irqs == [(line, value != 0)]


def test_wide_irq_writes_act_byte_by_byte():
    machine = Machine()
    machine.pio.write(0x200E, b"\x01\x00")
    assert machine.irqs == [(14, True), (15, False)]


def test_irq_ports_are_write_only():
    machine = Machine()
    assert machine.pio.read(0x2005, 1) == b"\xff"
    assert machine.irqs == []


@given(
    st.lists(
        st.tuples(
            st.sampled_from([1, 2, 4, 8]),
            st.integers(0, 0xFFFF),
            st.binary(min_size=8, max_size=8),
            st.booleans(),
        ),
        max_size=40,
    )
)
def test_iomem_behaves_as_memory(accesses):
    machine = Machine()
    model = {}
    for size, offset, data, is_write in accesses:
        offset = min(offset, 0x10000 - size)
        address = 0xFF000000 + offset
        if is_write:
            machine.mmio.write(address, data[:size])
            for i in range(size):
                model[offset + i] = data[i]
        else:
            expected = bytes(model.get(offset + i, 0) for i in range(size))
            assert machine.mmio.read(address, size) == expected


def test_iomem_last_byte_and_outside():
    machine = Machine()
    machine.mmio.write(0xFF00FFF8, b"12345678")
    assert machine.mmio.read(0xFF00FFF8, 8) == b"12345678"
    assert machine.mmio.read(0xFF00FFFC, 8) == b"\xff" * 8  # straddles the end: unhandled
    assert machine.mmio.unhandled_reads == 1


@given(
    st.lists(
        st.tuples(
            st.sampled_from(["pio", "mmio"]),
            st.integers(0, 0xFFFF),
            st.sampled_from([1, 2, 4, 8]),
            st.binary(min_size=8, max_size=8),
            st.booleans(),
        ),
        max_size=60,
    )
)
def test_random_accesses_never_raise_and_reads_have_the_right_size(accesses):
    machine = Machine()
    regions = {"pio": [(window, device) for bus, window, device in placements(machine.dev) if bus == "pio"],
               "mmio": [(window, device) for bus, window, device in placements(machine.dev) if bus == "mmio"]}
    for bus_name, position, size, data, is_write in accesses:
        if bus_name == "pio" and size == 8:
            size = 4
        ranges = regions[bus_name]
        (base, length), device = ranges[position % len(ranges)]
        if size > length:
            continue
        offset = position % (length - size + 1)
        if is_write:
            device.write(offset, data[:size])
        else:
            assert len(device.read(offset, size)) == size
    assert all(0 <= line < 24 and isinstance(level, bool) for line, level in machine.irqs)
    assert all(address % 4096 == 0 for address in machine.flushes)
