"""Unit tests for pyvmm.devices.debug_exit (QEMU isa-debug-exit model)."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pyvmm.devices import DebugExit


@st.composite
def valid_write(draw):
    """A naturally aligned 1-, 2- or 4-byte write inside a 4-port window."""
    size = draw(st.sampled_from([1, 2, 4]))
    offset = draw(st.sampled_from(range(0, 4, size)))
    value = draw(st.integers(0, (1 << (8 * size)) - 1))
    return offset, size, value


@given(valid_write())
def test_write_requests_exit_with_qemu_status(access):
    offset, size, value = access
    statuses = []
    device = DebugExit(statuses.append)
    device.write(offset, value.to_bytes(size, "little"))
    assert statuses == [(value << 1) | 1]
    assert device.exit_status == (value << 1) | 1


def test_value_is_little_endian():
    statuses = []
    DebugExit(statuses.append).write(0, b"\x01\x02\x00\x00")
    assert statuses == [(0x0201 << 1) | 1]


def test_status_is_always_odd_so_guest_cannot_fake_success():
    statuses = []
    DebugExit(statuses.append).write(0, b"\x00")
    assert statuses == [1]


@pytest.mark.parametrize(
    "offset,data",
    [
        (0, bytes(8)),  # wider than QEMU's 4-byte maximum
        (0, bytes(3)),  # not a power-of-two size
        (1, bytes(2)),  # misaligned, QEMU rejects it
        (2, bytes(4)),
        (0, b""),
    ],
)
def test_invalid_writes_are_ignored(offset, data):
    statuses = []
    device = DebugExit(statuses.append)
    device.write(offset, data)
    assert statuses == []
    assert device.exit_status is None


@given(offset=st.integers(0, 3), size=st.sampled_from([1, 2, 4, 8]))
def test_reads_return_zeros_like_qemu(offset, size):
    statuses = []
    assert DebugExit(statuses.append).read(offset, size) == bytes(size)
    assert statuses == []
