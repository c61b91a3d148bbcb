"""Split virtqueues from the device side: chains, rule checks, used ring, suppression."""

import struct

import pytest

from pyvmm.devices.virtio import spec
from pyvmm.devices.virtio.queue import QueueError, SplitQueue, need_event, ring_sizes
from pyvmm.memory import GuestMemory

RAM = 1 << 20
DESC, AVAIL, USED = 0x1000, 0x2000, 0x3000
SIZE = 8
NEXT, WRITE, INDIRECT = spec.DESC_F_NEXT, spec.DESC_F_WRITE, spec.DESC_F_INDIRECT


@pytest.fixture
def memory():
    with GuestMemory([(0, RAM)]) as memory:
        yield memory


def make_queue(memory, size=SIZE, event_idx=False, indirect=True):
    return SplitQueue(memory, size, DESC, AVAIL, USED, event_idx=event_idx, indirect=indirect)


def put(memory, index, addr, length, flags=0, following=0, table=DESC):
    memory.write(table + 16 * index, struct.pack("<QIHH", addr, length, flags, following))


def publish(memory, *heads, start=0, size=SIZE):
    for offset, head in enumerate(heads):
        memory.write_u16(AVAIL + 4 + 2 * ((start + offset) % size), head)
    memory.write_u16(AVAIL + 2, (start + len(heads)) & 0xFFFF)


def used_entries(memory, count, size=SIZE):
    return [struct.unpack("<II", memory.read(USED + 4 + 8 * (i % size), 8)) for i in range(count)]


def test_direct_chain_splits_readable_then_writable(memory):
    put(memory, 0, 0x10000, 16, NEXT, 3)
    put(memory, 3, 0x11000, 100, NEXT | WRITE, 5)
    put(memory, 5, 0x12000, 1, WRITE)
    publish(memory, 0)
    queue = make_queue(memory)
    chain = queue.pop()
    assert chain.head == 0
    assert chain.readable == [(0x10000, 16)]
    assert chain.writable == [(0x11000, 100), (0x12000, 1)]
    assert (chain.readable_length, chain.writable_length) == (16, 101)
    assert queue.pop() is None


def test_chain_data_helpers_move_bytes_across_buffers(memory):
    memory.write(0x10000, b"abc")
    memory.write(0x10100, b"defg")
    put(memory, 0, 0x10000, 3, NEXT, 1)
    put(memory, 1, 0x10100, 4, NEXT, 2)
    put(memory, 2, 0x20000, 2, NEXT | WRITE, 3)
    put(memory, 3, 0x20100, 5, WRITE)
    publish(memory, 0)
    chain = make_queue(memory).pop()
    assert chain.read() == b"abcdefg"
    assert chain.read(2, 3) == b"cde"
    assert chain.write(b"0123456789") == 7
    assert memory.read(0x20000, 2) == b"01" and memory.read(0x20100, 5) == b"23456"
    assert chain.write(b"xy", offset=1) == 2
    assert memory.read(0x20000, 2) == b"0x" and memory.read(0x20100, 1) == b"y"
    assert [bytes(v) for v in chain.readable_views(1, 4)] == [b"bc", b"de"]


def test_indirect_table_and_direct_descriptors_before_it(memory):
    table = 0x8000
    put(memory, 0, 0x10000, 4, NEXT, 1)                 # a direct buffer first (2.7.5.3.2)
    put(memory, 1, table, 32, INDIRECT | WRITE)         # the WRITE flag here is ignored
    put(memory, 0, 0x11000, 8, NEXT, 1, table=table)
    put(memory, 1, 0x12000, 16, WRITE, table=table)
    publish(memory, 0)
    chain = make_queue(memory).pop()
    assert chain.readable == [(0x10000, 4), (0x11000, 8)]
    assert chain.writable == [(0x12000, 16)]


def test_zero_length_buffers_are_left_out(memory):
    put(memory, 0, 0xFFFFFFFFFFFF, 0, NEXT, 1)   # never touched, so not checked
    put(memory, 1, 0x10000, 8, WRITE)
    publish(memory, 0)
    chain = make_queue(memory).pop()
    assert chain.readable == [] and chain.writable == [(0x10000, 8)]


@pytest.mark.parametrize("setup, message", [
    (lambda m: put(m, 0, 0x10000, 8, NEXT, SIZE), "past the end"),
    (lambda m: (put(m, 0, 0x10000, 8, NEXT, 1), put(m, 1, 0x10000, 8, NEXT, 0)), "loop"),
    (lambda m: put(m, 0, RAM - 4, 8), "outside guest RAM"),
    (lambda m: put(m, 0, 1 << 40, 8, WRITE), "outside guest RAM"),
    (lambda m: (put(m, 0, 0x10000, 8, WRITE | NEXT, 1), put(m, 1, 0x10000, 8)), "readable buffer follows"),
    (lambda m: put(m, 0, 0x8000, 32, INDIRECT | NEXT, 1), "with NEXT"),
    (lambda m: put(m, 0, 0x8000, 0, INDIRECT), "indirect table of 0 bytes"),
    (lambda m: put(m, 0, 0x8000, 24, INDIRECT), "indirect table of 24 bytes"),
    (lambda m: put(m, 0, 0x8000, 16 * (SIZE + 1), INDIRECT), "at most"),
    (lambda m: put(m, 0, RAM - 16, 32, INDIRECT), "indirect table at"),
    (lambda m: (put(m, 0, 0x8000, 16, INDIRECT), put(m, 0, 0x9000, 16, INDIRECT, table=0x8000)),
     "inside an indirect table"),
    (lambda m: (put(m, 0, 0x8000, 32, INDIRECT), put(m, 0, 0x10000, 8, NEXT, 0, table=0x8000)), "loop"),
    (lambda m: (put(m, 0, 0x8000, 32, INDIRECT), put(m, 0, 0x10000, 8, NEXT, 2, table=0x8000)),
     "past the end of the indirect table"),
])
def test_broken_chains_raise_queue_error(memory, setup, message):
    setup(memory)
    publish(memory, 0)
    with pytest.raises(QueueError, match=message):
        make_queue(memory).pop()


def test_indirect_needs_the_feature(memory):
    put(memory, 0, 0x8000, 16, INDIRECT)
    put(memory, 0, 0x10000, 8, WRITE, table=0x8000)
    publish(memory, 0)
    with pytest.raises(QueueError, match="not negotiated"):
        make_queue(memory, indirect=False).pop()


def test_head_past_the_table_and_jumping_index(memory):
    publish(memory, SIZE)
    with pytest.raises(QueueError, match="past the end"):
        make_queue(memory).pop()
    memory.write_u16(AVAIL + 2, SIZE + 1)
    with pytest.raises(QueueError, match="available index moved"):
        make_queue(memory).pop()


def test_a_chain_of_4_gib_is_refused():
    # 64 buffers of the whole 64 MiB RAM (the same bytes, over and over) add up to 4 GiB.
    ram, size = 64 << 20, 64
    with GuestMemory([(0, ram)]) as memory:
        for count, refused in ((63, False), (64, True)):
            for index in range(count):
                last = index == count - 1
                put(memory, index, 0, ram, 0 if last else NEXT, index + 1)
            publish(memory, 0, size=size)
            queue = SplitQueue(memory, size, DESC, AVAIL, USED)
            if refused:
                with pytest.raises(QueueError, match="4 GiB"):
                    queue.pop()
            else:
                assert queue.pop().readable_length == 63 * ram


def test_more_buffers_than_the_queue_size_is_refused(memory):
    table = 0x8000
    put(memory, 0, 0x10000, 1, NEXT, 1)
    put(memory, 1, table, 16 * SIZE, INDIRECT)
    for index in range(SIZE):
        put(memory, index, 0x10000, 1, NEXT if index < SIZE - 1 else 0, index + 1, table=table)
    publish(memory, 0)
    with pytest.raises(QueueError, match="more than"):
        make_queue(memory).pop()


def test_invalid_configurations(memory):
    for size in (0, 3, 12, 65536):
        with pytest.raises(QueueError, match="power of two"):
            SplitQueue(memory, size, DESC, AVAIL, USED)
    with pytest.raises(QueueError, match="descriptor table"):
        SplitQueue(memory, 8, RAM - 64, AVAIL, USED)
    with pytest.raises(QueueError, match="available ring"):
        SplitQueue(memory, 8, DESC, RAM - 8, USED)
    with pytest.raises(QueueError, match="used ring"):
        SplitQueue(memory, 8, DESC, AVAIL, RAM - 8 * 8 - 4)   # the avail_event field does not fit
    desc, avail, used = ring_sizes(256)
    assert (desc, avail, used) == (4096, 518, 2054)
    SplitQueue(memory, 8, DESC + 1, AVAIL + 1, USED + 1)       # unaligned rings work, as in QEMU


def test_push_fills_the_used_ring_and_wraps_indices(memory):
    queue = make_queue(memory)
    queue.used_idx = 0xFFFE
    queue.push(3, 10)
    queue.push(5, 0)
    assert memory.read_u16(USED + 2) == 0
    assert struct.unpack("<II", memory.read(USED + 4 + 8 * (0xFFFE % SIZE), 8)) == (3, 10)
    assert struct.unpack("<II", memory.read(USED + 4 + 8 * (0xFFFF % SIZE), 8)) == (5, 0)


def test_pop_follows_the_available_index_across_wraparound(memory):
    queue = make_queue(memory)
    queue.last_avail = queue.avail_seen = 0xFFFF
    put(memory, 2, 0x10000, 1, WRITE)
    put(memory, 4, 0x10000, 1, WRITE)
    memory.write_u16(AVAIL + 4 + 2 * (0xFFFF % SIZE), 2)
    memory.write_u16(AVAIL + 4, 4)
    memory.write_u16(AVAIL + 2, 1)
    assert [queue.pop().head, queue.pop().head, queue.pop()] == [2, 4, None]


def test_interrupts_follow_no_interrupt_flag(memory):
    queue = make_queue(memory)
    queue.push(0, 1)
    assert queue.needs_interrupt()
    memory.write_u16(AVAIL, spec.AVAIL_F_NO_INTERRUPT)
    queue.push(1, 1)
    assert not queue.needs_interrupt()


def test_interrupts_follow_the_used_event_index(memory):
    queue = make_queue(memory, event_idx=True)
    used_event = AVAIL + 4 + 2 * SIZE
    memory.write_u16(used_event, 2)          # "interrupt me once entry 2 is used"
    queue.push(0, 1)
    assert queue.needs_interrupt()           # the first decision always interrupts
    queue.push(1, 1)
    assert not queue.needs_interrupt()       # used index 2: entry 2 not used yet
    queue.push(2, 1)
    assert queue.needs_interrupt()           # used index 3: entry 2 is used
    queue.push(3, 1)
    assert not queue.needs_interrupt()


def test_need_event_matches_the_specification_formula():
    assert need_event(0, 1, 0)
    assert not need_event(1, 1, 0)
    assert need_event(0xFFFF, 0, 0xFFFE)        # across the wrap
    assert need_event(5, 10, 0) and not need_event(10, 10, 0)


def test_notification_suppression_without_and_with_event_idx(memory):
    queue = make_queue(memory)
    queue.suppress_notifications()
    assert memory.read_u16(USED) == spec.USED_F_NO_NOTIFY
    assert not queue.allow_notifications()
    assert memory.read_u16(USED) == 0
    publish(memory, 0)
    put(memory, 0, 0x10000, 1, WRITE)
    assert queue.allow_notifications()          # an entry arrived: look again

    memory.fill(0, 0x4000)
    queue = make_queue(memory, event_idx=True)
    put(memory, 0, 0x10000, 1, WRITE)
    publish(memory, 0, 0)
    queue.pop()
    queue.pop()
    assert not queue.allow_notifications()
    assert memory.read_u16(USED + 4 + 8 * SIZE) == 2     # avail_event: notify at entry 2
