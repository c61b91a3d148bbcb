"""virtio console without KVM: output in order and in bounded pieces, input backlog, emergency write."""

import pytest

from pyvmm.console import BufferOutput, ConsoleOutput
from pyvmm.devices.virtio.console import (INPUT_BACKLOG, OUTPUT_CHUNK, OUTPUT_HIGH_WATER, RECEIVE, TRANSMIT,
                                          VirtioConsole)
from pyvmm.testing.virtio import VirtioBench


class RecordingSink(BufferOutput):
    def __init__(self):
        super().__init__()
        self.writes, self.flushes = [], 0

    def write(self, data):
        self.writes.append(len(data))
        super().write(data)

    def flush(self):
        self.flushes += 1


@pytest.fixture
def console():
    sink = RecordingSink()
    device = VirtioConsole(sink)
    with VirtioBench(device, memory_size=4 << 20) as bench:
        rx, tx = bench.driver.start()
        yield bench, device, sink, rx, tx


def test_transmit_writes_every_readable_byte_in_order(console):
    bench, device, sink, rx, tx = console
    bench.memory.write(0x100000, b"hello, ")
    bench.memory.write(0x101000, b"world\n")
    head = tx.add([(0x100000, 7, False), (0x101000, 6, False)])
    tx.kick()
    bench.run()
    assert bytes(sink.data) == b"hello, world\n"
    assert tx.take_used() == [(head, 0)]


def test_a_huge_buffer_goes_out_in_bounded_pieces(console):
    bench, device, sink, rx, tx = console
    bench.memory.fill(0x100000, 3 << 20, 0x41)
    tx.add([(0x100000, 3 << 20, False)])
    tx.kick()
    bench.run()
    assert len(sink.data) == 3 << 20
    assert max(sink.writes) == OUTPUT_CHUNK and sink.flushes == len(sink.writes)


def test_input_waits_for_receive_buffers_then_fills_them(console):
    bench, device, sink, rx, tx = console
    device.feed(b"abcdefghij")
    bench.run()
    assert device.pending_input() == 10                 # no buffers yet
    first = rx.add([(0x200000, 4, True)])
    second = rx.add([(0x201000, 16, True)])
    rx.kick()
    bench.run()
    assert rx.take_used() == [(first, 4), (second, 6)]
    assert bench.memory.read(0x200000, 4) == b"abcd" and bench.memory.read(0x201000, 6) == b"efghij"
    third = rx.add([(0x202000, 8, True)])
    rx.kick()
    bench.run()
    assert rx.take_used() == []                         # nothing to give: the buffer waits
    device.feed(b"xy")
    bench.run()
    assert rx.take_used() == [(third, 2)] and bench.irq_level


def test_input_backlog_is_bounded(console):
    bench, device, sink, rx, tx = console
    device.feed(b"x" * (INPUT_BACKLOG - 10))
    device.feed(b"y" * 100)
    assert device.pending_input() == INPUT_BACKLOG and device.input_bytes_dropped == 90


def test_emergency_write_prints_the_low_byte(console):
    bench, device, sink, rx, tx = console
    transport = bench.transport
    transport.write(0x108, b"A\0\0\0")
    transport.write(0x108, b"B")
    transport.write(0x109, b"C")                        # the field's second byte: its low byte is 0
    transport.write(0x100, b"\x50\x00")                 # cols: read-only, nothing printed
    transport.write(0x108, b"\0\0\0\0")                 # zero: nothing
    assert bytes(sink.data) == b"AB\0"
    assert transport.read(0x108, 4) == bytes(4)
    assert transport.read(0x104, 4) == (1).to_bytes(4, "little")      # max_nr_ports


def test_queues_are_receive_then_transmit():
    assert (RECEIVE, TRANSMIT) == (0, 1)
    assert VirtioConsole(BufferOutput()).queue_count == 2


class StalledOutput(ConsoleOutput):
    """A terminal that takes nothing until `opened`."""

    def __init__(self):
        super().__init__(limit=8 << 20)
        self.taken, self.opened = bytearray(), False

    def flush(self):
        if self.opened:
            with self.lock:
                self.taken += self.pending
                self.pending.clear()
        return not self.pending


def test_a_stalled_output_makes_the_driver_wait_and_loses_nothing():
    output = StalledOutput()
    device = VirtioConsole(output)
    with VirtioBench(device, memory_size=4 << 20) as bench:
        rx, tx = bench.driver.start()
        bench.memory.fill(0x100000, 3 << 20, 0x42)
        heads = [tx.add([(0x100000 + (n << 18), 1 << 18, False)]) for n in range(6)]
        tx.kick()
        bench.run()
        used = tx.take_used()
        assert 0 < len(used) < 6                           # the rest waits in the queue
        assert len(output.pending) >= OUTPUT_HIGH_WATER
        assert bench.context.worker.timers                 # and the device will look again
        output.opened = True
        for _delay, fn, args in bench.context.worker.timers:
            fn(*args)
        bench.run()
        used += tx.take_used()
        assert [head for head, _ in used] == heads
        output.flush()
        assert bytes(output.taken) == b"\x42" * (6 << 18) and output.dropped == 0
