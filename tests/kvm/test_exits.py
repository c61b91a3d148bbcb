"""The exits guest drives every exit path of the run loop; each is checked here."""

import pytest
from example_devices import Recorder

from pyvmm.run.stop import STATUS_CRASH, STATUS_OK, STATUS_TIMEOUT

PORT_BASE, MMIO_BASE = 0x500, 0xD0000000


def run_exits(boot, ending, timeout=20):
    ports = Recorder({0x1: 0xA1, 0x2: 0xB2B1, 0x4: 0xC4C3C2C1, 0xD: 0x7E, 0xF: ending})
    mmio = Recorder({0x10: 0xD4D3D2D1, 0x20: 0xE1})
    result, _output, stats = boot("exits.bin", timeout=timeout,
                                  devices=[("port", PORT_BASE, 0x10, ports),
                                           ("mmio", MMIO_BASE, 0x1000, mmio)])
    return result, ports.log, mmio.log, stats


def dword(value):
    return ("write", 0x8, value.to_bytes(4, "little"))


def test_every_access_reaches_the_device_in_order(boot):
    result, ports, mmio, stats = run_exits(boot, ending=0)
    assert ports == [
        ("write", 0x0, b"\x11"), ("write", 0x0, b"\x33\x22"), ("write", 0x0, b"\x77\x66\x55\x44"),
        ("read", 0x1, 1), dword(0xA1),
        ("read", 0x2, 2), dword(0xB2B1),
        ("read", 0x4, 4), dword(0xC4C3C2C1),
        *[("write", 0xC, bytes([byte])) for byte in b"EXITS"],
        *[("read", 0xD, 1)] * 4, dword(0x7E7E7E7E),
        ("write", 0xA, b"\xa2\xa1"), ("write", 0xA, b"\xb2\xb1"),
        dword(0xFF),                                # the unclaimed port read all-ones
        dword(0xD4D3D2D1), dword(0xE1),             # the two MMIO reads, echoed
        ("read", 0xF, 1),
    ]
    assert mmio == [
        ("write", 0x0, b"\x5a"), ("write", 0x2, b"\x5c\x5b"), ("write", 0x4, b"\x60\x5f\x5e\x5d"),
        ("read", 0x10, 4), ("read", 0x20, 1),
    ]
    assert (result.status, result.reason) == (STATUS_OK, "halt")
    assert stats.by_reason()["mmio"] == 5
    assert stats.by_port()[(0x5FF, "in")] == 1


@pytest.mark.parametrize("ending, status, reason", [
    (0, STATUS_OK, "halt"),
    (1, STATUS_CRASH, "triple-fault"),
    (2, (0x42 << 1) | 1, "debug-exit"),
    (3, (0x0107 << 1) | 1, "debug-exit"),
    (6, STATUS_CRASH, "triple-fault"),
])
def test_each_ending_gives_its_status(boot, ending, status, reason):
    result, _, _, _ = run_exits(boot, ending)
    assert (result.status, result.reason) == (status, reason)
    if status == STATUS_CRASH:
        assert "triple fault" in result.message


@pytest.mark.parametrize("ending", [4, 5])
def test_spinning_or_interruptible_halt_is_stopped_by_the_timeout(boot, ending):
    # 4 spins; 5 halts with interrupts on, which waits for an interrupt as
    # on hardware (the in-kernel PIT and LAPIC could still raise one).
    result, _, _, _ = run_exits(boot, ending=ending, timeout=1)
    assert (result.status, result.reason) == (STATUS_TIMEOUT, "timeout")
