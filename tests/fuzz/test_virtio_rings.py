"""Hostile rings against the virtio devices, checked against a reference reading of the spec.

Each example writes generated descriptor tables (pyvmm.testing.virtio's
hostile_chains: loops, indices past the table, nested or NEXT-flagged
indirect tables, buffers outside or across the end of RAM, wrong order,
zero and 4 GiB lengths, jumping indices) into a queue of a running
device, rings, and lets the worker run. A reference walker below, written
from the virtio 1.2 text (2.7.5, 2.7.13) independently of queue.py,
predicts for each published chain whether it is valid and how many
writable bytes it has. The device must then:

- never raise, never report a failure of its own;
- use every valid chain before the first invalid one, in order, with the
  used length the device type gives (all writable bytes for the sink and
  the block device, at most 64 KiB for the entropy device); a chain the
  block device cannot read as a request (no 16-byte header, no status
  byte) counts as invalid;
- set DEVICE_NEEDS_RESET (and raise a configuration interrupt) at the
  first invalid chain or an available index more than the queue size
  ahead, and use nothing after it.
"""

import struct

from hypothesis import given, strategies as st

from pyvmm.devices.virtio import spec
from pyvmm.devices.virtio.blk import VirtioBlock
from pyvmm.devices.virtio.device import VirtioDevice
from pyvmm.devices.virtio.image import RawImage
from pyvmm.devices.virtio.rng import MAX_REQUEST, EntropySource, VirtioRng
from pyvmm.testing import fuzz_settings
from pyvmm.testing.virtio import VirtioBench, chain_specs, hostile_chains

RAM = 1 << 20
SIZE = 16
DATA = 0x40000


class Invalid(Exception):
    pass


def reference_walk(memory, size, head, indirect=True):
    """(readable bytes, writable bytes) of the chain at `head`, or Invalid."""
    def descriptor(table, entries, index):
        if index >= entries:
            raise Invalid("index past the table")
        return struct.unpack("<QIHH", memory.read(table + 16 * index, 16))

    def in_ram(addr, length):
        return addr + length <= RAM

    readable = writable = count = 0
    saw_writable = False
    table, entries, index, visited, nested = 0x10000, size, head, set(), False
    while True:
        if (table, index) in visited:
            raise Invalid("loop")
        visited.add((table, index))
        addr, length, flags, following = descriptor(table, entries, index)
        if flags & spec.DESC_F_INDIRECT:
            if not indirect or nested or flags & spec.DESC_F_NEXT:
                raise Invalid("indirect")
            if length == 0 or length % 16 or length // 16 > size or not in_ram(addr, length):
                raise Invalid("indirect table")
            table, entries, index, visited, nested = addr, length // 16, 0, set(), True
            continue
        if flags & spec.DESC_F_WRITE:
            saw_writable = True
        elif saw_writable:
            raise Invalid("order")
        if length:
            if not in_ram(addr, length):
                raise Invalid("outside RAM")
            count += 1
            if saw_writable:
                writable += length
            else:
                readable += length
            if count > size or readable + writable >= 1 << 32:
                raise Invalid("too long")
        if not flags & spec.DESC_F_NEXT:
            return readable, writable
        index = following


class Sink(VirtioDevice):
    """Uses every chain, claiming all its writable bytes."""

    device_id = 0x99
    queue_count = 1

    def handle(self, queue_index, chain):
        chain.write(b"\xaa" * min(chain.writable_length, 64))
        return chain.writable_length


def devices():
    return st.sampled_from(["sink", "rng", "blk"])


def make(kind, tmp_path=None):
    if kind == "blk":
        path = tmp_path / "disk.img"
        path.write_bytes(bytes(range(256)) * 256)
        return VirtioBlock(RawImage(str(path)), "disk0")
    return Sink() if kind == "sink" else VirtioRng(EntropySource())


def expected_length(kind, readable, writable):
    """The used length, or Invalid when the device type cannot answer the chain."""
    if kind == "blk":
        if readable < 16 or writable < 1:       # no header or no status byte
            raise Invalid("not a block request")
        return writable
    return writable if kind == "sink" else min(writable, MAX_REQUEST)


def predict(memory, kind, queue):
    """(the used entries the spec calls for, whether the device must end up
    needing a reset): the device reads the available index once, then pops
    every entry up to it, from the final contents of the ring."""
    available = memory.read_u16(queue.avail + 2)
    if available > SIZE:
        return [], True
    expected = []
    for slot in range(available):
        head = memory.read_u16(queue.avail + 4 + 2 * slot)
        try:
            readable, writable = reference_walk(memory, SIZE, head)
            expected.append((head, expected_length(kind, readable, writable)))
        except Invalid:
            return expected, True
    return expected, False


@fuzz_settings(max_examples=300)
@given(kind=devices(), chains=st.lists(hostile_chains(SIZE, RAM, DATA), min_size=1, max_size=4),
       event_idx=st.booleans())
def test_hostile_chains_get_the_specified_outcome(tmp_path_factory, kind, chains, event_idx):
    with VirtioBench(make(kind, tmp_path_factory.mktemp("blk")), memory_size=RAM) as bench:
        features = None if event_idx else bench.transport.offered & ~(1 << spec.F_RING_EVENT_IDX)
        queue = bench.driver.start([SIZE], base=0x10000, features=features)[0]
        assert queue.desc == 0x10000
        for chain in chains:
            chain.install(queue)
        expected, needs_reset = predict(bench.memory, kind, queue)
        queue.kick()
        bench.run()
        assert bench.failures == []
        assert queue.take_used() == expected
        assert bool(bench.driver.status & spec.DEVICE_NEEDS_RESET) == needs_reset
        interrupt = bench.driver.read(spec.MMIO_INTERRUPT_STATUS)
        assert bool(interrupt & spec.INT_CONFIG_CHANGE) == needs_reset
        assert bench.irq_level == bool(interrupt)


@fuzz_settings(max_examples=150)
@given(specs=st.lists(chain_specs(RAM, DATA), min_size=1, max_size=SIZE), indirect=st.booleans(),
       event_idx=st.booleans())
def test_well_formed_chains_are_all_used_in_order(specs, indirect, event_idx):
    with VirtioBench(Sink(), memory_size=RAM) as bench:
        features = None if event_idx else bench.transport.offered & ~(1 << spec.F_RING_EVENT_IDX)
        queue = bench.driver.start([SIZE], base=0x10000, features=features)[0]
        heads = []
        for number, buffers in enumerate(specs):
            buffers = [(b.addr, b.length, b.writable) for b in buffers]
            spare = len(queue.free) - (len(specs) - number - 1)    # one left for each chain to come
            if indirect or len(buffers) > spare:
                heads.append(queue.add(buffers, indirect_table=0x20000 + 0x400 * number))
            else:
                heads.append(queue.add(buffers))
        queue.kick()
        bench.run()
        assert bench.failures == [] and not bench.driver.status & spec.DEVICE_NEEDS_RESET
        writable = [sum(b.length for b in buffers if b.writable) for buffers in specs]
        assert queue.take_used() == list(zip(heads, writable))
        assert bench.irq_level
