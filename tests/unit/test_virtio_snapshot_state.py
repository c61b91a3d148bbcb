"""Virtio state in snapshots without KVM: the transport's registers and
queues and each device type's own state survive a save and a restore into
a new transport on the same guest memory, and the driver goes on where it
was; a damaged or inconsistent state is refused with DeviceStateError and
leaves the transport as it was."""

import copy
import json

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from pyvmm.devices.ratelimit import RateLimiter
from pyvmm.devices.state import DeviceStateError
from pyvmm.devices.virtio import spec
from pyvmm.devices.virtio.blk import VirtioBlock
from pyvmm.devices.virtio.console import VirtioConsole
from pyvmm.devices.virtio.device import VirtioDevice
from pyvmm.devices.virtio.image import RawImage
from pyvmm.devices.virtio.mmio import EmptySlot
from pyvmm.devices.virtio.net import F_MAC, F_MRG_RXBUF, F_STATUS, HEADER, VirtioNet
from pyvmm.memory import GuestMemory
from pyvmm.testing.virtio import SocketTap, VirtioBench

RAM = 4 << 20
DATA = 0x100000
FEATURES = 1 << spec.F_VERSION_1 | 1 << spec.F_RING_EVENT_IDX


class Echo(VirtioDevice):
    """Copies each request's readable bytes into its writable ones; two queues."""

    device_id = 0x55
    queue_count = 2

    def handle(self, queue_index, chain):
        return chain.write(chain.read())


def echo_request(queue, memory, slot, payload):
    source, target = DATA + 0x2000 * slot, DATA + 0x2000 * slot + 0x1000
    memory.write(source, payload)
    return queue.add([(source, len(payload), False), (target, len(payload), True)])


@pytest.fixture
def memory():
    with GuestMemory([(0, RAM)]) as memory:
        yield memory


def running_echo(memory, requests=3):
    """An Echo behind a transport, set up with event indices, `requests`
    served on queue 1 and acknowledged."""
    bench = VirtioBench(Echo(), memory=memory)
    queues = bench.driver.start([8, 16], features=FEATURES)
    for slot in range(requests):
        echo_request(queues[1], memory, slot, bytes([slot + 1]) * 32)
    queues[1].kick()
    bench.run()
    assert len(queues[1].take_used()) == requests
    return bench, queues


def test_a_restored_transport_goes_on_where_the_driver_left_it(memory):
    first, queues = running_echo(memory, requests=5)
    saved = first.transport.save_state()
    json.dumps(saved)                                   # plain data
    assert saved["queues"][1]["ready"] and saved["queues"][1]["used_idx"] == 5
    second = VirtioBench(Echo(), memory=memory)
    try:
        second.transport.restore_state(saved)
        assert second.transport.save_state() == saved
        assert second.driver.status == first.driver.status
        # The same driver queue, now behind the new transport: indices go on from 5.
        for queue in queues:
            queue.driver = second.driver
        echo_request(queues[1], memory, 9, b"after the restore")
        queues[1].kick()
        second.run()
        assert queues[1].take_used() == [(queues[1].published[-1], len(b"after the restore"))]
        assert memory.read(DATA + 0x2000 * 9 + 0x1000, 17) == b"after the restore"
        assert queues[1].used_idx == 6
    finally:
        second.close()
        first.close()


def test_a_pending_interrupt_is_raised_again_on_the_new_line(memory):
    first, queues = running_echo(memory)
    echo_request(queues[1], memory, 4, b"unacknowledged")
    queues[1].kick()
    first.run()
    saved = first.transport.save_state()
    assert saved["interrupt_status"] == spec.INT_USED_BUFFER
    second = VirtioBench(Echo(), memory=memory)
    try:
        second.transport.restore_state(saved)
        assert second.irq_level
        assert second.driver.read(spec.MMIO_INTERRUPT_STATUS) == spec.INT_USED_BUFFER
        second.driver.ack_interrupt()
        assert not second.irq_level
    finally:
        second.close()
        first.close()


def damaged(saved, change):
    state = copy.deepcopy(saved)
    change(state)
    return state


def set_queue(index, **fields):
    def change(state):
        state["queues"][index].update(fields)
    return change


REFUSED = {
    "another device type": lambda s: s.update(device_id=2),
    "status bits out of order": lambda s: s.update(status=spec.DRIVER_OK | spec.ACKNOWLEDGE),
    "a feature not offered": lambda s: s.update(negotiated=s["negotiated"] | 1 << 40,
                                                driver_features=[s["driver_features"][0],
                                                                 s["driver_features"][1] | 1 << 8]),
    "negotiated unlike what the driver wrote": lambda s: s.update(negotiated=1 << spec.F_VERSION_1),
    "a queue too large": set_queue(1, num=2048),
    "a queue size not a power of two": set_queue(1, num=12),
    "a ring outside guest RAM": set_queue(1, device=RAM - 8),
    "a descriptor table past 2^64": set_queue(0, desc=(1 << 64) - 16),
    "a request in flight": set_queue(1, last_avail=7),
    "indices of a queue not ready": lambda s: s["queues"].append(s["queues"].pop(0)) or s["queues"][0].update(
        ready=False),
    "a queue missing": lambda s: s["queues"].pop(),
    "an index past 16 bits": set_queue(1, used_idx=1 << 16, last_avail=1 << 16),
    "an unknown field": lambda s: s.update(extra=1),
    "a missing field": lambda s: s.pop("queue_sel"),
    "a needs-reset reason without the status bit": lambda s: s.update(needs_reset_reason="why"),
    "an interrupt before DRIVER_OK": lambda s: s.update(status=spec.ACKNOWLEDGE, interrupt_status=1,
                                                        negotiated=0),
    "device state of the wrong shape": lambda s: s.update(device=[]),
}


@pytest.mark.parametrize("what", sorted(REFUSED))
def test_a_damaged_state_is_refused_and_changes_nothing(memory, what):
    first, _queues = running_echo(memory)
    saved = first.transport.save_state()
    second, _ = running_echo(memory, requests=1)
    before = second.transport.save_state()
    try:
        with pytest.raises(DeviceStateError):
            second.transport.restore_state(damaged(saved, REFUSED[what]))
        assert second.transport.save_state() == before
    finally:
        second.close()
        first.close()


JSON_VALUES = st.recursive(st.none() | st.booleans() | st.integers(-2, 1 << 66) | st.text(max_size=8),
                           lambda inner: st.lists(inner, max_size=3)
                           | st.dictionaries(st.text(max_size=6), inner, max_size=3), max_leaves=6)


@st.composite
def mutations(draw, saved):
    """A saved state with one field replaced, removed or added, at any depth."""
    state = copy.deepcopy(saved)
    target = state
    while True:
        keys = list(target) if isinstance(target, dict) else list(range(len(target)))
        key = draw(st.sampled_from(keys))
        if isinstance(target[key], (dict, list)) and target[key] and draw(st.booleans()):
            target = target[key]
            continue
        action = draw(st.sampled_from(["replace", "remove", "add"]))
        if action == "replace":
            old = target[key]
            if isinstance(old, int) and not isinstance(old, bool) and draw(st.booleans()):
                # plausible values too: small numbers, one bit flipped
                target[key] = draw(st.integers(0, 0xFFFF) | st.integers(0, 63).map(lambda bit: old ^ 1 << bit))
            else:
                target[key] = draw(JSON_VALUES)
        elif action == "remove":
            del target[key]
        elif isinstance(target, dict):
            target[draw(st.text(max_size=6))] = draw(JSON_VALUES)
        else:
            target.append(draw(JSON_VALUES))
        return state


SAVED_ECHO = None


def saved_echo():
    global SAVED_ECHO
    if SAVED_ECHO is None:
        with GuestMemory([(0, RAM)]) as memory:
            bench, _ = running_echo(memory)
            SAVED_ECHO = bench.transport.save_state()
            bench.close()
    return SAVED_ECHO


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_any_damage_is_refused_cleanly_or_taken_exactly(memory, data):
    """A mutated state either restores (and is then exactly what the
    transport saves again) or is refused with DeviceStateError alone,
    leaving the transport's state as it was."""
    state = data.draw(mutations(saved_echo()))
    bench, _ = running_echo(memory, requests=1)
    before = bench.transport.save_state()
    try:
        try:
            bench.transport.restore_state(state)
        except DeviceStateError:
            assert bench.transport.save_state() == before
        else:
            assert bench.transport.save_state() == state
            bench.run()                               # the passes it scheduled run without trouble
    finally:
        bench.close()


def test_an_empty_slot_saves_nothing_and_takes_nothing_else():
    slot = EmptySlot()
    assert slot.save_state() == {}
    slot.restore_state({})
    with pytest.raises(DeviceStateError):
        slot.restore_state({"status": 1})


# --- each device type's own state ------------------------------------------------------

MAC = bytes.fromhex("525400123456")


def ethernet(length):
    return MAC + bytes.fromhex("525400aabbcc") + b"\x08\x00" + bytes([0xAB]) * (length - 14)


def test_network_device_keeps_its_waiting_frame_offloads_and_limiters(memory):
    limiter = RateLimiter.from_rates(1 << 20, 1000)
    first_tap, second_tap = SocketTap(), SocketTap()
    first = VirtioBench(VirtioNet(first_tap, MAC, tx_limiter=limiter), memory=memory)
    features = FEATURES | 1 << F_MAC | 1 << F_STATUS | 1 << F_MRG_RXBUF | 1 << 1 | 1 << 0  # CSUM, GUEST_CSUM
    rx, _tx = first.driver.start([16, 16], features=features)
    assert first_tap.offload                               # GUEST_CSUM: TUN_F_CSUM
    first_tap.send(ethernet(100))
    first.context.worker.poll()
    first.run()                                            # no receive buffers: the frame waits
    saved = first.transport.save_state()
    assert len(bytes.fromhex(saved["device"]["frame"])) == HEADER.size + 100
    assert saved["device"]["tx_limiter"] is not None and saved["device"]["rx_limiter"] is None
    second = VirtioBench(VirtioNet(second_tap, MAC, tx_limiter=RateLimiter.from_rates(1 << 20, 1000)),
                         memory=memory)
    try:
        second.transport.restore_state(saved)
        assert second_tap.offload == first_tap.offload     # given to the new TAP again
        assert second.transport.save_state() == saved
        rx.driver = second.driver
        rx.add([(DATA, 2048, True)])
        rx.kick()
        second.run()
        [(head, length)] = rx.take_used()
        assert length == HEADER.size + 100
        assert memory.read(DATA + HEADER.size, 100) == ethernet(100)
        # A device of another MAC, or without the limiter, refuses the state.
        for other in (VirtioNet(SocketTap(), bytes.fromhex("525400000001"), tx_limiter=RateLimiter.from_rates(10)),
                      VirtioNet(SocketTap(), MAC)):
            with VirtioBench(other, memory=memory) as third:
                with pytest.raises(DeviceStateError):
                    third.transport.restore_state(saved)
    finally:
        second.close()
        first.close()


def test_block_device_refuses_a_disk_of_another_size(memory, tmp_path):
    small, large = tmp_path / "small.img", tmp_path / "large.img"
    small.write_bytes(bytes(64 << 10))
    large.write_bytes(bytes(128 << 10))
    first = VirtioBench(VirtioBlock(RawImage(str(small))), memory=memory)
    first.driver.start([16], features=FEATURES)
    saved = first.transport.save_state()
    first.close()
    with VirtioBench(VirtioBlock(RawImage(str(large))), memory=memory) as other:
        with pytest.raises(DeviceStateError, match="sectors"):
            other.transport.restore_state(saved)
    with VirtioBench(VirtioBlock(RawImage(str(small), readonly=True)), memory=memory) as other:
        with pytest.raises(DeviceStateError):
            other.transport.restore_state(saved)
    with VirtioBench(VirtioBlock(RawImage(str(small))), memory=memory) as same:
        same.transport.restore_state(saved)
        assert same.transport.save_state() == saved


def test_console_input_not_yet_taken_goes_with_the_state(memory):
    first = VirtioBench(VirtioConsole(None), memory=memory)
    queues = first.driver.start([8, 8], features=FEATURES)
    first.device.feed(b"typed ahead")
    first.run()                                            # no receive buffers yet
    saved = first.transport.save_state()
    first.close()
    second = VirtioBench(VirtioConsole(None), memory=memory)
    try:
        second.transport.restore_state(saved)
        queues[0].driver = second.driver
        queues[0].add([(DATA, 64, True)])
        queues[0].kick()
        second.run()
        assert queues[0].take_used() == [(queues[0].published[-1], 11)]
        assert memory.read(DATA, 11) == b"typed ahead"
    finally:
        second.close()
