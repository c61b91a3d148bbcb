"""pyvmm.testing itself: the strategies reach what they promise, the harness
catches contract breakers, the replay program format matches the guest."""

import itertools
import os
import re
import struct

import pytest
from hypothesis import given, strategies as st

from pyvmm.devices import Bus
from pyvmm.testing import (MMIO, PIO, Access, InvariantViolation, Placement, Rig,
                           access_sequences, accesses_for, addresses_around, drive,
                           encode_program, example_database_path, fuzz_settings, mmio_accesses,
                           port_accesses)
from pyvmm.testing import replay
from pyvmm.testing.harness import pieces

REPOSITORY = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
GUEST_SOURCE = os.path.join(REPOSITORY, "guests", "replay.S")


# ------------------------------------------------------------- strategies

def test_strategies_reach_every_size_direction_window_and_count():
    seen = set()

    @fuzz_settings(max_examples=600, database=None, derandomize=True)
    @given(port_accesses(0x3F8, 8, margin=8) | mmio_accesses(0xD0000000, 0x1000, margin=8))
    def collect(access):
        base, length = (0x3F8, 8) if access.kind == PIO else (0xD0000000, 0x1000)
        end = base + length
        if access.address + access.size <= base:
            where = "before"
        elif access.address >= end:
            where = "after"
        elif access.address < base:
            where = "straddling start"
        elif access.address + access.size > end:
            where = "straddling end"
        else:
            where = "inside"
        seen.add((access.kind, access.size, access.direction, where))
        seen.add((access.kind, "string" if access.count > 1 else "single"))
        assert len(access.data) == (access.length if access.is_write else 0)

    collect()
    for size in (1, 2, 4):
        for direction, where in itertools.product(("read", "write"), ("before", "after", "inside")):
            assert (PIO, size, direction, where) in seen
    for size in (1, 2, 4, 8):
        for direction in ("read", "write"):
            assert (MMIO, size, direction, "inside") in seen
    assert (PIO, "string") in seen and (PIO, "single") in seen and (MMIO, "string") not in seen
    assert any(where.startswith("straddling") for *_, where in (s for s in seen if len(s) == 4))


@fuzz_settings(max_examples=200)
@given(data=st.data(), base=st.integers(0, 0xFFFF), length=st.integers(1, 64),
       size=st.sampled_from([1, 2, 4]))
def test_addresses_stay_in_the_address_space(data, base, length, size):
    length = min(length, 0x10000 - base)
    address = data.draw(addresses_around(base, length, size, margin=16, limit=0x10000))
    assert 0 <= address <= 0x10000 - size
    assert base - 16 <= address < base + length + 16


def test_access_validates_itself():
    with pytest.raises(ValueError):
        Access(PIO, "read", 0x10, 8)
    with pytest.raises(ValueError):
        Access(MMIO, "read", 0x10, 4, count=2)
    with pytest.raises(ValueError):
        Access(PIO, "write", 0x10, 2, data=b"x")
    assert list(Access(PIO, "write", 0x10, 2, count=2, data=b"abcd").elements()) == [
        (0x10, 2, b"ab"), (0x10, 2, b"cd")]


# ---------------------------------------------------------------- harness

class Short:
    def read(self, offset, size):
        return b"\0" * (size - 1)

    def write(self, offset, data):
        raise KeyError(offset)


def test_harness_catches_contract_breakers():
    with pytest.raises(InvariantViolation, match="DeviceError"):
        drive(Short(), [Access(PIO, "read", 0x100, 2)], base=0x100, length=4)
    with pytest.raises(InvariantViolation, match="KeyError"):
        drive(Short(), [Access(PIO, "write", 0x100, 1, data=b"x")], base=0x100, length=4)
    for size, count in itertools.product((1, 2, 4), (1, 3)):
        report = drive(Short(), [Access(PIO, "read", 0x200, size, count)], base=0x100, length=4)
        assert report.reads() == [b"\xff" * size * count]


def test_sentinels_catch_a_device_that_reaches_into_its_neighbour():
    class Leaky:
        def read(self, offset, size):
            return bytes(size)

        def write(self, offset, data):
            rig.port_bus.write(0x108, data)   # pokes the port after its range

    rig = Rig([Placement(PIO, 0x100, 8, Leaky(), "leaky")], margin=8)
    with pytest.raises(InvariantViolation, match="wrong routing"):
        drive(rig, [Access(PIO, "write", 0x100, 1, data=b"x")])


def test_harness_catches_a_bus_that_routes_straddling_accesses():
    class Greedy(Bus):
        def _find(self, addr, size):       # forgets the end check
            return super()._find(addr, 1)

    class Zero:
        def read(self, offset, size):
            return bytes(size)

        def write(self, offset, data):
            pass

    bus = Greedy("pio", 0x10000)
    device = Zero()
    bus.register(0x100, 4, device, name="zero")
    drive(bus, [Access(PIO, "read", 0x100, 4)], sentinels=False)
    with pytest.raises(InvariantViolation, match="wrong routing"):
        drive(bus, [Access(PIO, "read", 0x102, 4)], sentinels=False)
    # drive() put the bus back as it was.
    assert bus.ranges() == [(0x100, 4, "zero")] and bus.device_at(0x100) is device


def test_mmio_is_split_at_page_boundaries_like_kvm():
    assert pieces(MMIO, 0xFFD, 8, None) == [(0xFFD, 3, None), (0x1000, 5, None)]
    assert pieces(MMIO, 0xFF8, 8, b"12345678") == [(0xFF8, 8, b"12345678")]
    assert pieces(PIO, 0xFFF, 4, None) == [(0xFFF, 4, None)]


@fuzz_settings(max_examples=50)
@given(accesses=access_sequences(accesses_for([(PIO, 0x100, 8), (MMIO, 0x1000, 0x20)])))
def test_a_bus_and_its_placements_drive_the_same(accesses):
    class Memory:
        def __init__(self):
            self.bytes = bytearray(0x40)

        def read(self, offset, size):
            return bytes(self.bytes[offset:offset + size])

        def write(self, offset, data):
            self.bytes[offset:offset + len(data)] = data

    def placements():
        return [Placement(PIO, 0x100, 8, Memory(), "p"), Placement(MMIO, 0x1000, 0x20, Memory(), "m")]

    first = drive(placements(), accesses)
    port_bus, mmio_bus = Bus.port_io(), Bus.mmio()
    for placement in placements():
        (port_bus if placement.kind == PIO else mmio_bus).register(
            placement.base, placement.length, placement.device, name=placement.name)
    second = drive((port_bus, mmio_bus), accesses)
    assert first.reads() == second.reads()
    assert first.events == second.events


# ----------------------------------------------------------------- replay

def guest_constants():
    with open(GUEST_SOURCE) as source:
        return {name: int(value, 0) for name, value in
                re.findall(r"^#define\s+(\w+)\s+(0x[0-9a-fA-F]+|\d+)\s*$", source.read(), re.M)}


def test_program_format_matches_the_guest():
    guest = guest_constants()
    assert guest["PROGRAM"] == replay.PROGRAM_ADDR
    assert guest["RESULTS"] == replay.RESULTS_ADDR
    assert guest["RECORD_SIZE"] == replay.RECORD.size == 24
    assert guest["MAGIC"] == replay.RESULTS_MAGIC
    assert (guest["KIND_PIO"], guest["KIND_MMIO"], guest["KIND_END"]) == (
        replay.KIND_PIO, replay.KIND_MMIO, replay.KIND_END)
    assert (guest["EXIT_DONE"] << 1) | 1 == replay.STATUS_DONE
    assert (guest["EXIT_BAD"] << 1) | 1 == replay.STATUS_BAD
    assert (guest["STATE_DONE"], guest["STATE_BAD"]) == (replay.STATE_DONE, replay.STATE_BAD)


def test_encode_program_layout():
    accesses = [Access(PIO, "write", 0x3F8, 1, data=b"A"),
                Access(PIO, "write", 0x3F8, 2, count=2, data=b"wxyz"),
                Access(MMIO, "read", 0xD0000000, 8)]
    program = encode_program(accesses, mark_port=None)
    records = [replay.RECORD.unpack_from(program, i * 24) for i in range(4)]
    data_addr = replay.PROGRAM_ADDR + 4 * 24
    assert records == [(0, 1, 1, 0, 1, 0x3F8, ord("A")), (0, 1, 2, 0, 2, 0x3F8, data_addr),
                       (1, 0, 8, 0, 1, 0xD0000000, 0), (0xFF, 0, 0, 0, 0, 0, 0)]
    assert program[4 * 24:] == b"wxyz"
    marked = encode_program(accesses)
    assert len(marked) == 7 * 24 + 4
    assert replay.RECORD.unpack_from(marked, 24) == (0, 1, 4, 0, 1, replay.MARK_PORT, 0)
    assert replay.RECORD.unpack_from(marked, 5 * 24) == (0, 1, 4, 0, 1, replay.MARK_PORT, 2)


def test_the_example_database_is_where_the_tests_run_and_git_ignores_it():
    assert example_database_path() == os.path.join(os.getcwd(), ".hypothesis", "examples")
    with open(os.path.join(REPOSITORY, ".gitignore")) as ignore:
        assert ".hypothesis/" in ignore.read().split()


@pytest.mark.kvm
def test_a_bad_record_stops_the_replay_guest():
    from pyvmm import guests
    from pyvmm.config import VmConfig
    from pyvmm.machine import Machine

    with Machine(VmConfig(kernel=guests.path("replay.bin"), memory=16 << 20, serial="buffer",
                          timeout=20)) as machine:
        program = encode_program([Access(PIO, "read", 0x700, 1)], mark_port=None)
        program = program[:24] + struct.pack("<BBBBIQQ", 1, 0, 3, 0, 1, 0xD0000000, 0) + program[24:]
        machine.memory.write(replay.PROGRAM_ADDR, program)
        result = machine.run()
        magic, done, state, _ = struct.unpack("<IIII", machine.memory.read(replay.RESULTS_ADDR, 16))
    assert (result.status, result.reason) == (replay.STATUS_BAD, "debug-exit")
    assert (magic, done, state) == (replay.RESULTS_MAGIC, 1, replay.STATE_BAD)
