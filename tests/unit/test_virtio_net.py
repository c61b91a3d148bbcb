"""The virtio network device without KVM or a TAP: its transport, a driver
in test RAM, and a socket pair standing in for the TAP (SocketTap: whole
frames behind their 12-byte header, as IFF_VNET_HDR gives them)."""

import struct

import pytest
from hypothesis import given, settings, strategies as st

from pyvmm.devices.ratelimit import RateLimiter
from pyvmm.devices.virtio import spec
from pyvmm.devices.virtio.net import (F_CSUM, F_GUEST_CSUM, F_GUEST_TSO4, F_MAC, F_MRG_RXBUF, F_STATUS, HEADER,
                                      MAX_FRAME, VirtioNet, parse_mac)
from pyvmm.devices.virtio.tap import TUN_F_CSUM
from pyvmm.testing.virtio import SocketTap, VirtioBench, hostile_chains

MAC = bytes.fromhex("525400123456")
RAM = 4 << 20
DATA = 0x100000
RX, TX = 0, 1
BASIC = 1 << spec.F_VERSION_1 | 1 << F_MAC | 1 << F_STATUS
MERGED = BASIC | 1 << F_MRG_RXBUF | 1 << spec.F_RING_EVENT_IDX


def frame(length, fill=0xAB):
    """An Ethernet frame of `length` bytes to our MAC."""
    return MAC + bytes.fromhex("525400aabbcc") + b"\x08\x00" + bytes([fill]) * (length - 14)


def header(flags=0, gso_type=0, num_buffers=0):
    return HEADER.pack(flags, gso_type, 0, 0, 0, 0, num_buffers)


@pytest.fixture
def net():
    tap = SocketTap()
    device = VirtioNet(tap, MAC)
    bench = VirtioBench(device, memory_size=RAM)
    yield bench, tap
    bench.close()


def start(bench, features=MERGED, sizes=(16, 16)):
    return bench.driver.start(list(sizes), features=features)


def post_rx(queue, count, size, base=DATA):
    return [queue.add([(base + i * 0x10000, size, True)]) for i in range(count)]


def deliver(bench):
    """The worker sees the TAP readable (or not) and runs what that queues."""
    bench.context.worker.poll()
    bench.run()


def test_offers_mac_status_and_merged_buffers_and_shows_the_configured_mac(net):
    bench, _tap = net
    offered = bench.driver.device_features()
    for feature in (F_MAC, F_STATUS, F_MRG_RXBUF, F_CSUM, F_GUEST_CSUM):
        assert offered >> feature & 1
    assert bench.driver.config(0, 4) + bench.driver.config(4, 2) == MAC
    assert bench.driver.config(6, 2) == b"\x01\x00"          # VIRTIO_NET_S_LINK_UP


def test_link_down_is_a_configuration_change(net):
    bench, _tap = net
    start(bench)
    bench.device.set_link(False)
    assert bench.driver.config(6, 2) == b"\x00\x00"
    assert bench.driver.ack_interrupt() & spec.INT_CONFIG_CHANGE
    bench.device.set_link(True)
    assert bench.driver.config(6, 2) == b"\x01\x00"


def test_offloads_need_what_they_build_on_and_reach_the_tap_only_when_accepted(net):
    bench, tap = net
    assert not bench.driver.negotiate(BASIC | 1 << F_GUEST_TSO4)       # TSO4 without GUEST_CSUM
    start(bench, BASIC)
    assert tap.offload == 0
    start(bench, BASIC | 1 << F_GUEST_CSUM | 1 << F_CSUM)
    assert tap.offload == TUN_F_CSUM
    bench.driver.reset()
    assert tap.offload == 0


def test_transmits_each_chain_as_one_frame_and_counts_it(net):
    bench, tap = net
    _rx, tx = start(bench)
    data = frame(100)
    bench.memory.write(DATA, header(num_buffers=7))
    bench.memory.write(DATA + 0x1000, data[:20])
    bench.memory.write(DATA + 0x2000, data[20:])
    head = tx.add([(DATA, 12, False), (DATA + 0x1000, 20, False), (DATA + 0x2000, 80, False)])
    tx.kick()
    bench.run()
    assert tx.take_used() == [(head, 0)]
    assert tap.received() == [header() + data]                         # num_buffers is not the TAP's
    counters = bench.device.counters()
    assert (counters["tx_packets"], counters["tx_bytes"], counters["tx_dropped"]) == (1, 100, 0)


@pytest.mark.parametrize("what, buffers, flags", [
    ("header only", [12], 0),
    ("shorter than an Ethernet header", [12, 13], 0),
    ("longer than the largest frame", [12, MAX_FRAME - 0x8000, 0x8001], 0),
    ("a checksum offload not negotiated", [12, 60], 1),
])
def test_frames_the_driver_may_not_send_are_dropped_and_counted(net, what, buffers, flags):
    bench, tap = net
    _rx, tx = start(bench)
    bench.memory.write(DATA, header(flags=flags))
    chain, addr = [], DATA
    for length in buffers:
        chain.append((addr, length, False))
        addr += length
    head = tx.add(chain)
    tx.kick()
    bench.run()
    assert tx.take_used() == [(head, 0)], what
    assert tap.received() == []
    assert bench.device.counters()["tx_dropped"] == 1
    assert not bench.driver.status & spec.DEVICE_NEEDS_RESET and not bench.failures


def test_a_transmit_chain_shorter_than_the_header_needs_a_reset(net):
    bench, tap = net
    _rx, tx = start(bench)
    tx.add([(DATA, 11, False)])
    tx.kick()
    bench.run()
    assert bench.driver.status & spec.DEVICE_NEEDS_RESET
    assert tap.received() == [] and not bench.failures


def test_receives_a_frame_into_one_buffer_with_its_header(net):
    bench, tap = net
    rx, _tx = start(bench)
    heads = post_rx(rx, 4, 2048)
    rx.kick()
    bench.run()
    data = frame(300)
    assert tap.send(data)
    deliver(bench)
    assert rx.take_used() == [(heads[0], 12 + 300)]
    assert bench.memory.read(DATA, 12 + 300) == header(num_buffers=1) + data
    assert bench.levels[-1] is True
    counters = bench.device.counters()
    assert (counters["rx_packets"], counters["rx_bytes"], counters["rx_dropped"]) == (1, 300, 0)


def test_a_frame_spreads_over_merged_buffers_returned_together(net):
    bench, tap = net
    rx, _tx = start(bench)
    heads = post_rx(rx, 4, 1024)
    rx.kick()
    bench.run()
    data = frame(2500)
    tap.send(data)
    deliver(bench)
    assert rx.take_used() == [(heads[0], 1024), (heads[1], 1024), (heads[2], 12 + 2500 - 2048)]
    gathered = b"".join(bench.memory.read(DATA + i * 0x10000, length)
                        for i, length in enumerate((1024, 1024, 12 + 2500 - 2048)))
    assert gathered == header(num_buffers=3) + data


def test_without_merged_buffers_a_frame_too_long_is_dropped_and_the_buffer_kept(net):
    bench, tap = net
    rx, _tx = start(bench, BASIC)
    heads = post_rx(rx, 1, 512)
    rx.kick()
    bench.run()
    tap.send(frame(1000))
    tap.send(frame(60, fill=0x11))
    deliver(bench)
    assert rx.take_used() == [(heads[0], 12 + 60)]         # the same buffer, for the next frame
    assert bench.memory.read(DATA + 12, 60) == frame(60, fill=0x11)
    assert bench.device.counters()["rx_dropped"] == 1


def test_a_guest_that_takes_no_frames_leaves_them_in_the_tap(net):
    """Bounded: with no buffers the device holds one frame and stops
    watching the TAP; the rest wait in the TAP's own (bounded) queue."""
    bench, tap = net
    rx, _tx = start(bench)
    sent = sum(tap.send(frame(100, fill=i)) for i in range(50))
    assert sent == 50
    deliver(bench)
    deliver(bench)
    assert tap.fd not in bench.context.worker.watches
    assert bench.device.counters()["rx_packets"] == 0
    heads = post_rx(rx, 8, 2048)
    rx.kick()
    bench.run()
    deliver(bench)
    assert [head for head, _ in rx.take_used()] == heads                  # in order, none lost
    assert bench.memory.read(DATA + 12, 15) == frame(100, fill=0)[:15]
    assert bench.device.counters()["rx_packets"] == 8


def test_too_few_merged_buffers_wait_for_a_notification_without_spinning(net):
    bench, tap = net
    rx, _tx = start(bench)
    calls = []
    process = bench.device.process

    def counted(index, queue):
        calls.append(index)
        assert len(calls) < 50, "the worker keeps looking at the same buffers"
        return process(index, queue)
    bench.device.process = counted
    tap.send(frame(5000))
    first = post_rx(rx, 1, 2048)
    rx.kick()
    bench.run()
    deliver(bench)
    assert rx.take_used() == []
    more = post_rx(rx, 2, 2048, base=DATA + 0x100000)
    rx.kick()
    bench.run()
    assert [head for head, _ in rx.take_used()] == first + more
    assert bench.device.counters()["rx_packets"] == 1


@pytest.mark.parametrize("what, buffer", [
    ("smaller than the header", (DATA, 11, True)),
    ("readable", (DATA, 2048, False)),
    ("outside guest RAM", (RAM - 100, 2048, True)),
])
def test_hostile_receive_buffers_need_a_reset_and_nothing_is_written(net, what, buffer):
    bench, tap = net
    rx, _tx = start(bench)
    bench.memory.fill(DATA, 2048, 0x5A)
    rx.add([buffer])
    rx.kick()
    tap.send(frame(100))
    bench.run()
    deliver(bench)
    assert bench.driver.status & spec.DEVICE_NEEDS_RESET, what
    assert rx.take_used() == [] and not bench.failures
    assert bench.memory.read(DATA, 2048) == b"\x5a" * 2048


def test_a_rate_limited_transmit_waits_on_a_timer_and_loses_nothing():
    tap = SocketTap()
    clock = [0]
    limiter = RateLimiter.from_rates(ops_per_second=10, burst=0.2, clock=lambda: clock[0])  # 2 frames a bucket
    with VirtioBench(VirtioNet(tap, MAC, tx_limiter=limiter), memory_size=RAM) as bench:
        _rx, tx = start(bench)
        for i in range(5):
            bench.memory.write(DATA + i * 0x1000, header() + frame(60, fill=i))
            tx.add([(DATA + i * 0x1000, 72, False)])
        tx.kick()
        bench.run()
        assert len(tap.received()) == 2
        timers = bench.context.worker.timers
        assert len(timers) == 1 and timers[0][0] == pytest.approx(0.1)        # one timer, not a loop
        assert bench.device.counters()["tx_throttled"] == 1
        clock[0] += 10 ** 9
        bench.context.worker.fire_timers()
        received = tap.received()
        assert [data[12 + 14] for data in received] == [2, 3]
        clock[0] += 10 ** 9
        bench.context.worker.fire_timers()
        assert len(tap.received()) == 1 and len(tx.take_used()) == 5


def test_parse_mac_refuses_what_is_not_a_unicast_address():
    assert parse_mac("52:54:00:12:34:56") == MAC
    for text in ("52:54:00:12:34", "52-54-00-12-34-56", "zz:54:00:12:34:56", "01:00:5e:00:00:01", ""):
        with pytest.raises(ValueError):
            parse_mac(text)


RING = 16


@settings(max_examples=150, deadline=None)
@given(queue_index=st.sampled_from([RX, TX]), merged=st.booleans(),
       chains=st.lists(hostile_chains(RING, RAM, DATA, floor=0x80000), min_size=1, max_size=4),
       frames=st.lists(st.integers(0, 9000), max_size=4))
def test_hostile_chains_never_break_the_device(queue_index, merged, chains, frames):
    """Any descriptor tables on either queue, with frames arriving: no
    exception, no device failure, used lengths within the chain, and
    nothing used once the device needs a reset."""
    tap = SocketTap()
    with VirtioBench(VirtioNet(tap, MAC), memory_size=RAM) as bench:
        queues = start(bench, MERGED if merged else BASIC, sizes=(RING, RING))
        queue = queues[queue_index]
        for length in frames:
            tap.send(frame(max(length, 14)) if length else b"")
        for chain in chains:
            chain.install(queue)
            queue.kick()
            bench.run()
            deliver(bench)
        used = [entry for q in queues for entry in q.take_used()]
        assert not bench.failures
        for head, length in used:
            assert head < RING and length <= 0x10000 + 12
        if bench.driver.status & spec.DEVICE_NEEDS_RESET:
            before = sum(q.used_idx for q in queues)
            queues[TX].add([(DATA, 100, False)])
            queues[TX].kick()
            bench.run()
            deliver(bench)
            assert sum(q.used_idx for q in queues) == before


@settings(max_examples=60, deadline=None)
@given(steps=st.lists(st.one_of(st.tuples(st.just("frame"), st.integers(14, 4000)),
                                st.tuples(st.just("reset"), st.booleans()),
                                st.tuples(st.just("buffers"), st.integers(1, 6)),
                                st.just(("run", 0))), max_size=30))
def test_random_traffic_while_the_driver_resets(steps):
    """Frames keep arriving while the driver resets and sets the device up
    again: every frame delivered lands whole in buffers of the current
    driver, and the device never holds more than one frame of its own."""
    tap = SocketTap()
    with VirtioBench(VirtioNet(tap, MAC), memory_size=RAM) as bench:
        rx, _tx = start(bench)
        sent = 0
        for kind, value in steps:
            if kind == "frame":
                sent += tap.send(frame(value, fill=value & 0xFF))
            elif kind == "reset":
                bench.driver.reset()
                if value:
                    rx, _tx = start(bench, MERGED if value else BASIC)
                else:
                    rx = None
            elif kind == "buffers" and rx is not None and len(rx.free) >= value:
                post_rx(rx, value, 4096, base=DATA + 0x10000 * (RING - len(rx.free)))
                rx.kick()
            bench.run()
            deliver(bench)
            if rx is not None:
                for head, length in rx.take_used():
                    assert 12 <= length <= 4096
            assert not bench.failures
        counters = bench.device.counters()
        assert counters["rx_packets"] + counters["rx_dropped"] <= sent
