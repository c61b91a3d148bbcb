"""Unit tests for pyvmm.devices.bus (pure Python, no KVM)."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pyvmm.devices import Bus, BusError, DebugExit, DeviceError, Serial16550
from pyvmm.devices import bus as bus_module


class RecordingDevice:
    """Remembers every access; reads return a pattern derived from the offset."""

    def __init__(self):
        self.reads = []
        self.writes = []

    def read(self, offset, size):
        self.reads.append((offset, size))
        return bytes((offset + i) & 0xFF for i in range(size))

    def write(self, offset, data):
        self.writes.append((offset, bytes(data)))


class ShortReadDevice(RecordingDevice):
    def read(self, offset, size):
        return b"\x00" * (size - 1)


# ------------------------------------------------------------ registration


def test_constructors_set_address_space_limits():
    assert Bus.port_io().limit == 0x10000
    assert Bus.mmio().limit == 1 << 64


def test_ranges_are_listed_sorted_with_names():
    bus = Bus.port_io()
    bus.register(0x3F8, 8, RecordingDevice(), "com1")
    bus.register(0x60, 1, RecordingDevice(), "kbd")
    bus.register(0xF4, 4, RecordingDevice())
    assert bus.ranges() == [(0x60, 1, "kbd"), (0xF4, 4, "RecordingDevice"), (0x3F8, 8, "com1")]


@pytest.mark.parametrize("length", [0, -1, -8])
def test_register_refuses_non_positive_length(length):
    bus = Bus.port_io()
    with pytest.raises(BusError, match="not positive"):
        bus.register(0x100, length, RecordingDevice())
    assert bus.ranges() == []


@pytest.mark.parametrize("base,length", [(0xFFFF, 2), (0x10000, 1), (-1, 2), (0, 0x10001)])
def test_register_refuses_ranges_outside_the_bus(base, length):
    bus = Bus.port_io()
    with pytest.raises(BusError, match="outside the bus"):
        bus.register(base, length, RecordingDevice())


def test_register_accepts_range_ending_exactly_at_limit():
    bus = Bus.mmio()
    device = RecordingDevice()
    bus.register((1 << 64) - 0x1000, 0x1000, device, "top")
    assert bus.read((1 << 64) - 8, 8) == bytes(range(0xF8, 0x100))  # offset 0xff8


@pytest.mark.parametrize(
    "base,length",
    [
        (0x3F8, 8),  # identical
        (0x3F0, 9),  # overlaps the start
        (0x3FF, 4),  # overlaps the end
        (0x3FA, 2),  # inside
        (0x300, 0x200),  # covers
    ],
)
def test_register_refuses_overlap_and_names_both_ranges(base, length):
    bus = Bus.port_io()
    bus.register(0x3F8, 8, RecordingDevice(), "com1")
    with pytest.raises(BusError) as excinfo:
        bus.register(base, length, RecordingDevice(), "intruder")
    message = str(excinfo.value)
    assert "'com1' at [0x3f8, 0x400)" in message
    assert f"'intruder' at [{base:#x}, {base + length:#x})" in message
    assert bus.ranges() == [(0x3F8, 8, "com1")]


def test_adjacent_ranges_are_allowed():
    bus = Bus.port_io()
    bus.register(0x10, 0x10, RecordingDevice(), "a")
    bus.register(0x20, 0x10, RecordingDevice(), "b")
    bus.register(0x08, 0x08, RecordingDevice(), "c")
    assert [name for _, _, name in bus.ranges()] == ["c", "a", "b"]


def test_register_refuses_objects_that_are_not_devices():
    with pytest.raises(BusError, match="read"):
        Bus.port_io().register(0, 1, object(), "bogus")


@given(
    first=st.tuples(st.integers(0, 60), st.integers(1, 20)),
    second=st.tuples(st.integers(0, 60), st.integers(1, 20)),
)
def test_second_registration_fails_exactly_when_ranges_overlap(first, second):
    bus = Bus("tiny", 80)
    bus.register(first[0], first[1], RecordingDevice(), "first")
    overlap = first[0] < second[0] + second[1] and second[0] < first[0] + first[1]
    if overlap:
        with pytest.raises(BusError):
            bus.register(second[0], second[1], RecordingDevice(), "second")
    else:
        bus.register(second[0], second[1], RecordingDevice(), "second")
        assert len(bus.ranges()) == 2


# ----------------------------------------------------------------- routing


def test_accesses_reach_the_device_with_relative_offsets():
    bus = Bus.port_io()
    device = RecordingDevice()
    bus.register(0x3F8, 8, device)
    assert bus.read(0x3FB, 2) == b"\x03\x04"
    bus.write(0x3FD, b"\x7f")
    assert device.reads == [(3, 2)]
    assert device.writes == [(5, b"\x7f")]
    assert bus.unhandled_reads == bus.unhandled_writes == 0


def test_routing_alternates_between_devices_correctly():
    # Exercises the last-hit cache: a hit in one range must not shadow another.
    bus = Bus.port_io()
    a, b = RecordingDevice(), RecordingDevice()
    bus.register(0x10, 4, a)
    bus.register(0x14, 4, b)
    bus.write(0x11, b"A")
    bus.write(0x15, b"B")
    bus.write(0x13, b"C")
    assert a.writes == [(1, b"A"), (3, b"C")]
    assert b.writes == [(1, b"B")]


def test_unhandled_read_returns_all_ones_and_is_counted():
    bus = Bus.port_io()
    bus.register(0x3F8, 8, RecordingDevice())
    for size in (1, 2, 4, 8):
        assert bus.read(0x80, size) == b"\xff" * size
    assert bus.read(0x81, 1) == b"\xff"
    assert bus.unhandled_reads == 5
    assert bus.unhandled_writes == 0
    assert bus.unhandled_by_address == {0x80: 4, 0x81: 1}


def test_unhandled_write_is_dropped_and_counted():
    bus = Bus.port_io()
    device = RecordingDevice()
    bus.register(0x3F8, 8, device)
    bus.write(0x3F0, b"\x01")
    bus.write(0x3F0, b"\x01\x02")
    bus.write(0x400, b"\x01")
    assert device.writes == []
    assert bus.unhandled_writes == 3
    assert bus.unhandled_by_address == {0x3F0: 2, 0x400: 1}


def test_access_straddling_a_range_boundary_is_unhandled():
    bus = Bus.port_io()
    a, b = RecordingDevice(), RecordingDevice()
    bus.register(0x10, 4, a)
    bus.register(0x14, 4, b)
    assert bus.read(0x13, 2) == b"\xff\xff"  # across a -> b
    bus.write(0x17, b"\x00\x00")  # from b into nothing
    assert bus.read(0x0F, 4) == b"\xff" * 4  # from nothing into a
    assert a.reads == a.writes == b.reads == b.writes == []
    assert bus.unhandled_reads == 2 and bus.unhandled_writes == 1


def test_straddling_access_is_unhandled_right_after_a_hit_in_the_same_range():
    # The last-hit cache must check the whole access, not just its start.
    bus = Bus.port_io()
    device = RecordingDevice()
    bus.register(0x10, 4, device)
    bus.read(0x10, 1)
    assert bus.read(0x13, 2) == b"\xff\xff"
    bus.write(0x12, b"\x00" * 4)
    assert device.reads == [(0, 1)] and device.writes == []
    assert bus.unhandled_reads == 1 and bus.unhandled_writes == 1


def test_per_address_statistics_are_capped(monkeypatch):
    monkeypatch.setattr(bus_module, "MAX_TRACKED_UNHANDLED_ADDRESSES", 3)
    bus = Bus.port_io()
    for addr in range(10):
        bus.read(addr, 1)
    bus.read(0, 1)
    assert bus.unhandled_reads == 11
    assert bus.unhandled_by_address == {0: 2, 1: 1, 2: 1}


def test_wrong_sized_device_read_raises_device_error_naming_device():
    bus = Bus.port_io()
    bus.register(0x70, 2, ShortReadDevice(), "rtc")
    with pytest.raises(DeviceError, match="'rtc'.*returned 1 bytes for a 2-byte read"):
        bus.read(0x70, 2)


def test_device_at_reports_owner():
    bus = Bus.port_io()
    device = RecordingDevice()
    bus.register(0x20, 2, device)
    assert bus.device_at(0x21) is device
    assert bus.device_at(0x22) is None


# -------------------------------------------------------------- unregister


def test_unregister_by_base_and_by_device():
    bus = Bus.port_io()
    a, b = RecordingDevice(), RecordingDevice()
    bus.register(0x10, 4, a, "a")
    bus.register(0x20, 4, b, "b1")
    bus.register(0x30, 4, b, "b2")
    bus.unregister(0x10)
    assert bus.ranges() == [(0x20, 4, "b1"), (0x30, 4, "b2")]
    bus.unregister(b)
    assert bus.ranges() == []


def test_unregister_unknown_raises():
    bus = Bus.port_io()
    bus.register(0x10, 4, RecordingDevice())
    with pytest.raises(BusError):
        bus.unregister(0x11)
    with pytest.raises(BusError):
        bus.unregister(RecordingDevice())


def test_unregistered_range_is_no_longer_routed_even_if_cached():
    bus = Bus.port_io()
    device = RecordingDevice()
    bus.register(0x10, 4, device)
    bus.read(0x10, 1)  # now the last-hit range
    bus.unregister(device)
    assert bus.read(0x10, 1) == b"\xff"
    assert device.reads == [(0, 1)]
    bus.register(0x10, 4, RecordingDevice())  # the range is free again


def test_real_devices_behind_a_port_bus():
    output, statuses = bytearray(), []
    bus = Bus.port_io()
    bus.register(0x3F8, 8, Serial16550(output=output.extend), "com1")
    bus.register(0xF4, 4, DebugExit(statuses.append), "debug-exit")
    for char in b"ok\n":
        while not bus.read(0x3FD, 1)[0] & 0x20:
            pass
        bus.write(0x3F8, bytes([char]))
    bus.write(0xF4, (0x10).to_bytes(4, "little"))
    assert output == b"ok\n"
    assert statuses == [0x21]


# ------------------------------------------------------------ properties


@st.composite
def populated_bus(draw):
    """A bus with random non-overlapping ranges, plus the ranges for reference."""
    limit = draw(st.sampled_from([0x40, 0x10000, 1 << 64]))
    layout = draw(st.lists(st.tuples(st.integers(0, 12), st.integers(1, 16)), max_size=6))
    span = sum(gap + length for gap, length in layout)
    if span > limit:
        layout, span = [], 0
    cursor = draw(st.integers(0, limit - span))
    bus = Bus("test", limit)
    ranges = []
    for gap, length in layout:
        cursor += gap
        device = RecordingDevice()
        bus.register(cursor, length, device)
        ranges.append((cursor, length, device))
        cursor += length
    return bus, ranges


@st.composite
def access_for(draw, bus, ranges):
    size = draw(st.sampled_from([1, 2, 4, 8]))
    if ranges and draw(st.booleans()):
        base, length, _ = draw(st.sampled_from(ranges))
        addr = base + draw(st.integers(-8, length + 8))
    else:
        addr = draw(st.integers(0, bus.limit - 1))
    data = draw(st.binary(min_size=size, max_size=size)) if draw(st.booleans()) else None
    return addr, size, data


@settings(deadline=None)
@given(st.data())
def test_random_accesses_never_raise_and_reach_only_the_containing_device(data):
    bus, ranges = data.draw(populated_bus())
    for _ in range(data.draw(st.integers(1, 20))):
        addr, size, payload = data.draw(access_for(bus, ranges))
        owner = [
            (base, device) for base, length, device in ranges if base <= addr and addr + size <= base + length
        ]
        before = [(len(d.reads), len(d.writes)) for _, _, d in ranges]
        unhandled_before = bus.unhandled_reads + bus.unhandled_writes

        if payload is None:
            result = bus.read(addr, size)
            assert len(result) == size
        else:
            bus.write(addr, payload)

        after = [(len(d.reads), len(d.writes)) for _, _, d in ranges]
        changed = [d for (_, _, d), b, a in zip(ranges, before, after) if b != a]
        if owner:
            base, device = owner[0]
            assert changed == [device]
            if payload is None:
                assert device.reads[-1] == (addr - base, size)
            else:
                assert device.writes[-1] == (addr - base, payload)
            assert bus.unhandled_reads + bus.unhandled_writes == unhandled_before
        else:
            assert changed == []
            assert bus.unhandled_reads + bus.unhandled_writes == unhandled_before + 1
            if payload is None:
                assert result == b"\xff" * size


class Logged:
    """A device that logs its accesses; optional delivery declarations."""

    def __init__(self, calls, **declarations):
        self.calls = calls
        for name, value in declarations.items():
            setattr(self, name, value)

    def read(self, offset, size):
        self.calls.append(("read", offset))
        return bytes(size)

    def write(self, offset, data):
        self.calls.append(("write", offset, bytes(data)))


def test_settle_runs_before_every_access_that_reaches_a_device_but_not_a_queued_write():
    calls = []
    bus = Bus.port_io()
    bus.register(0x600, 4, Logged(calls))
    bus.settle = lambda entry: calls.append(("settle", entry.base))
    bus.write(0x601, b"\x01")
    assert bus.read(0x602, 2) == b"\x00\x00"
    bus.read(0x700, 1)                              # no device: nothing to settle
    bus.write(0x603, b"\x07", queued=True)
    assert calls == [("settle", 0x600), ("write", 1, b"\x01"), ("settle", 0x600), ("read", 2),
                     ("write", 3, b"\x07")]


def test_deliver_many_uses_write_many_when_the_device_has_it():
    calls = []
    plain = Logged(calls)
    batched = Logged(calls)
    batched.write_many = lambda offset, size, data: calls.append(("many", offset, size, data))
    bus = Bus.port_io()
    bus.register(0x600, 4, plain)
    bus.register(0x700, 4, batched)
    bus.deliver_many(0x602, 1, b"ab")
    bus.deliver_many(0x701, 2, b"abcd")
    bus.deliver_many(0x800, 1, b"zz")               # nobody there: unhandled, counted
    assert calls == [("write", 2, b"a"), ("write", 2, b"b"), ("many", 1, 2, b"abcd")]
    assert bus.unhandled_writes == 2


@pytest.mark.parametrize("declarations, message", [
    ({"posted_writes": ((2, 4),)}, "outside"),
    ({"posted_writes": ((0, 2), (1, 1))}, "overlap"),
    ({"posted_writes": ((0, 0),)}, "outside"),
    ({"posted_writes": "abc"}, "integers"),
    ({"posted_writes": ((0, 1, 2),)}, "integers"),
    ({"cached_reads": ((0, 3),)}, "size"),
    ({"cached_reads": ((3, 2),)}, "outside"),
    ({"doorbells": ((0, 1, 256),)}, "does not fit"),
    ({"doorbells": ((0, 8, 1),)}, "cannot be matched"),          # 8 bytes: MMIO only
    ({"doorbells": ((0, 1, 1),), "posted_writes": ((2, 1),)}, "both"),
])
def test_bad_delivery_declarations_are_refused_at_registration(declarations, message):
    bus = Bus.port_io()
    with pytest.raises(BusError, match=message):
        bus.register(0x600, 4, Logged([], **declarations))
    assert bus.ranges() == []


def test_good_declarations_are_kept_with_the_range():
    bus = Bus.mmio()
    device = Logged([], posted_writes=((0, 8),), cached_reads=((8, 8), (16, 3)), doorbells=())
    bus.register(0xD0000000, 0x20, device)
    delivery = bus.delivery_at(0xD0000010)
    assert (delivery.posted, delivery.cached, delivery.doorbells) == (((0, 8),), ((8, 8), (16, 3)), ())
    mmio_doorbell = Logged([], doorbells=((0x50, 8, 1),))
    bus.register(0xD0001000, 0x100, mmio_doorbell)
    assert bus.delivery_at(0xD0001000).doorbells == ((0x50, 8, 1),)


def test_register_state_tells_its_listener_of_changes_only():
    bus = Bus.port_io()
    bus.register(0x600, 8, Logged([], posted_writes=((0, 1),), cached_reads=((5, 1),)))
    state = bus.delivery_at(0x600).registers
    heard = []
    assert state.posting == {0: True} and state.values == {5: None}
    state.bind(lambda kind, offset: heard.append((kind, offset)))
    assert heard == [("posted", 0), ("cached", 5)]          # the state at binding
    heard.clear()
    state.allow_posted(0, True)
    state.publish(5, None)
    state.publish(5, 0x60)
    state.publish(5, 0x60)
    state.allow_posted(0, False)
    assert heard == [("cached", 5), ("posted", 0)]
    with pytest.raises(KeyError):
        state.publish(4, 1)
    with pytest.raises(KeyError):
        state.allow_posted(5, True)
