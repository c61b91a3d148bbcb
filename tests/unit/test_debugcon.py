"""Unit tests for pyvmm.devices.debugcon (QEMU isa-debugcon model, no KVM)."""

from hypothesis import given
from hypothesis import strategies as st

from pyvmm.devices import Bus, DebugConsole


def test_writes_go_to_output_byte_by_byte():
    out = []
    con = DebugConsole(out.append)
    for char in b"hi\n":
        con.write(0, bytes([char]))
    assert out == [b"h", b"i", b"\n"]
    assert con.bytes_written == 3


def test_reads_return_qemu_readback_value():
    con = DebugConsole(lambda data: None)
    assert con.read(0, 1) == b"\xe9"


def test_readback_is_configurable_like_qemu_property():
    assert DebugConsole(lambda data: None, readback=0x42).read(0, 1) == b"\x42"


def test_only_the_low_byte_of_a_wide_write_reaches_the_console():
    out = []
    DebugConsole(out.append).write(0, b"AB")
    assert out == [b"A"]


@given(st.binary(max_size=200))
def test_output_is_exactly_what_was_written(text):
    out = bytearray()
    con = DebugConsole(out.extend)
    bus = Bus.port_io()
    bus.register(0xE9, 1, con)
    for char in text:
        bus.write(0xE9, bytes([char]))
    assert bytes(out) == text


@given(
    st.lists(
        st.tuples(st.integers(0xE7, 0xEA), st.sampled_from([1, 2, 4]), st.booleans(), st.binary(min_size=4, max_size=4)),
        max_size=50,
    )
)
def test_random_accesses_never_raise_and_reads_have_the_right_size(accesses):
    out = []
    con = DebugConsole(out.append)
    bus = Bus.port_io()
    bus.register(0xE9, 1, con)
    for port, size, is_write, data in accesses:
        if is_write:
            bus.write(port, data[:size])
        else:
            assert len(bus.read(port, size)) == size
    assert all(len(chunk) == 1 for chunk in out)
    for size in (1, 2, 4):  # direct, wider than the bus ever asks
        assert len(con.read(0, size)) == size
