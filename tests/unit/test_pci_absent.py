"""Unit tests for pyvmm.devices.pci_absent (PCI config mechanism #1, no devices)."""

from hypothesis import given
from hypothesis import strategies as st

from pyvmm.devices import Bus, PciConfigAbsent
from pyvmm.devices.acpi_pm import ResetControl


def make_bus(device):
    bus = Bus.port_io()
    bus.register(0xCF8, 8, device)
    return bus


@given(address=st.integers(0, 0xFFFFFFFF))
def test_config_address_reads_back_what_was_written(address):
    bus = make_bus(PciConfigAbsent())
    bus.write(0xCF8, address.to_bytes(4, "little"))
    assert int.from_bytes(bus.read(0xCF8, 4), "little") == address


@given(address=st.integers(0, 0xFFFFFFFF), offset=st.integers(0, 3))
def test_narrow_reads_return_the_byte_lanes(address, offset):
    bus = make_bus(PciConfigAbsent())
    bus.write(0xCF8, address.to_bytes(4, "little"))
    assert bus.read(0xCF8 + offset, 1)[0] == (address >> (8 * offset)) & 0xFF


def test_narrow_writes_do_not_change_the_address():
    dev = PciConfigAbsent()
    bus = make_bus(dev)
    bus.write(0xCF8, (0x80001234).to_bytes(4, "little"))
    bus.write(0xCFB, b"\x01")  # Linux's type-1 probe pokes this byte
    bus.write(0xCF8, b"\x00\x00")
    bus.write(0xCFA, b"\x00")
    assert dev.config_address == 0x80001234


@given(
    address=st.integers(0, 0xFFFFFFFF),
    offset=st.integers(0, 3),
    size=st.sampled_from([1, 2, 4]),
)
def test_config_data_reads_all_ones_of_the_access_size(address, offset, size):
    dev = PciConfigAbsent()
    bus = make_bus(dev)
    bus.write(0xCF8, address.to_bytes(4, "little"))
    if offset + size <= 4:
        assert bus.read(0xCFC + offset, size) == b"\xff" * size
        assert dev.config_reads == 1


def test_config_data_writes_are_dropped():
    dev = PciConfigAbsent()
    bus = make_bus(dev)
    bus.write(0xCF8, (0x80000000).to_bytes(4, "little"))
    bus.write(0xCFC, b"\x12\x34\x56\x78")
    assert bus.read(0xCFC, 4) == b"\xff" * 4
    assert dev.config_writes == 1


class Resets:
    def __init__(self):
        self.count = 0

    def __call__(self):
        self.count += 1


def test_single_bytes_at_0xcf9_go_to_the_reset_control_register():
    resets = Resets()
    bus = make_bus(PciConfigAbsent(reset_control=ResetControl(resets)))
    bus.write(0xCF9, b"\x02")
    assert bus.read(0xCF9, 1) == b"\x02"
    assert resets.count == 0
    bus.write(0xCF9, b"\x06")  # Linux reboot=pci
    assert resets.count == 1


def test_dword_at_0xcf8_still_reaches_the_address_register_with_reset_control():
    resets = Resets()
    dev = PciConfigAbsent(reset_control=ResetControl(resets))
    bus = make_bus(dev)
    bus.write(0xCF8, (0x8000FF04).to_bytes(4, "little"))  # byte 1 is 0xff: bit 2 set
    assert resets.count == 0
    assert bus.read(0xCF8, 4) == (0x8000FF04).to_bytes(4, "little")


def test_without_reset_control_0xcf9_is_part_of_the_address():
    bus = make_bus(PciConfigAbsent())
    bus.write(0xCF8, (0x80ABCD00).to_bytes(4, "little"))
    assert bus.read(0xCF9, 1) == b"\xcd"
    bus.write(0xCF9, b"\x06")  # a narrow write: ignored
    assert bus.read(0xCF8, 4) == (0x80ABCD00).to_bytes(4, "little")


@st.composite
def accesses(draw):
    size = draw(st.sampled_from([1, 2, 4]))
    offset = draw(st.integers(0, 8 - size))
    data = draw(st.binary(min_size=size, max_size=size)) if draw(st.booleans()) else None
    return offset, size, data


@given(st.lists(accesses(), max_size=60), st.booleans())
def test_random_accesses_never_raise_and_reads_have_the_right_size(sequence, with_reset_control):
    resets = Resets()
    dev = PciConfigAbsent(reset_control=ResetControl(resets) if with_reset_control else None)
    for offset, size, data in sequence:
        if data is None:
            result = dev.read(offset, size)
            assert len(result) == size
            if offset >= 4:
                assert result == b"\xff" * size
        else:
            dev.write(offset, data)
    if not with_reset_control:
        assert resets.count == 0
