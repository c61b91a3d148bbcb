"""Testing virtio devices without KVM: a context, a driver, hostile rings.

Fuzzing your own virtio device (a VirtioDevice subclass behind an
MmioTransport) takes three pieces, all usable with hypothesis:

    from pyvmm.testing.virtio import VirtioBench, chain_specs, driver_actions

    bench = VirtioBench(MyDevice())            # guest RAM, a context, the transport
    queue = bench.driver.start()[0]            # reset, negotiate, queues ready, DRIVER_OK
    head = queue.add([(0x80000, 512, True)])   # one writable buffer
    queue.kick()
    bench.run()                                # the worker's calls, on this thread
    assert queue.take_used() == [(head, 512)]

VirtioBench(device, memory_size=..., irq=True)
    guest RAM (a real GuestMemory: every access bounds-checked), a
    TestContext (memory, a recording InterruptLine, an InlineWorker whose
    calls run when bench.run() is called, the RegisterState the cached
    reads are published to) and the transport, attached.
    bench.levels lists the interrupt line's changes, bench.failures what the
    device reported through context.fail.
Driver (bench.driver)
    register access by name (read/write of 32-bit registers), start() for
    the whole initialisation, and DriverQueue objects that lay out the
    three ring areas and add chains (direct or indirect) the right way.
    DriverQueue.write_descriptor / publish put anything in a ring, for
    hostile tests.
chain_specs(...), hostile_chains(...)
    strategies for descriptor chains: well-formed ones and ones that break
    every rule a device must survive (loops, indices past the table,
    nested or NEXT-flagged indirect tables, buffers outside RAM or spanning
    its end, readable after writable, zero lengths, 4 GiB chains).
    HostileChain.install(queue) writes one into a queue and publishes it.
driver_actions(queue_count)
    register-level actions of a driver in any order (status bits, feature
    words, queue set-up, notifications, interrupt acks, resets, reads),
    for state machines and sequences; Action.apply(driver) performs one.

Invariants worth asserting on any device: no exception leaves read,
write or bench.run(); bench.failures stays empty (a device failure is a
bug, a bad ring is the driver's); every used entry names a chain head the
driver published, with a length no larger than its writable bytes; and
once DEVICE_NEEDS_RESET is set, nothing more is used until a reset.
"""

from __future__ import annotations

import os
import select
import socket
import struct
from dataclasses import dataclass, field
from typing import Callable, List, Optional, Sequence, Tuple

from hypothesis import strategies as st

from pyvmm.devices.context import InterruptLine
from pyvmm.devices.delivery import Delivery
from pyvmm.devices.virtio import spec
from pyvmm.devices.virtio.mmio import MmioTransport
from pyvmm.devices.virtio.queue import ring_sizes
from pyvmm.memory import GuestMemory

PAGE = 4096
DEFAULT_MEMORY = 1 << 20
_DESCRIPTOR = struct.Struct("<QIHH")


class InlineTimer:
    """InlineWorker.call_later's handle: cancel() takes the timer out."""

    def __init__(self, timers: list, entry: tuple) -> None:
        self._timers, self._entry = timers, entry

    def cancel(self) -> None:
        for index, entry in enumerate(self._timers):
            if entry is self._entry:
                del self._timers[index]
                return


class InlineWorker:
    """Stands in for a DeviceWorker: calls queue up and run on the calling
    thread when run() is called, so a test decides when the device works."""

    def __init__(self) -> None:
        self.calls: List[Tuple[Callable, tuple]] = []
        self.timers: List[Tuple[float, Callable, tuple]] = []
        self.watches = {}
        self.ran = 0

    def call(self, fn, *args) -> None:
        self.calls.append((fn, args))

    def call_later(self, delay, fn, *args) -> "InlineTimer":
        entry = (delay, fn, args)
        self.timers.append(entry)
        return InlineTimer(self.timers, entry)

    def watch(self, fd, fn) -> None:
        self.watches[fd] = fn

    def unwatch(self, fd) -> None:
        self.watches.pop(fd, None)

    @property
    def on_worker(self) -> bool:
        return True

    def poll(self) -> int:
        """Calls the watch callback of every watched fd that is readable now
        (once each), then runs what they queued; how many fired."""
        ready = [fd for fd in list(self.watches) if select.select([fd], [], [], 0)[0]]
        for fd in ready:
            fn = self.watches.get(fd)
            if fn is not None:
                fn()
        self.run()
        return len(ready)

    def fire_timers(self) -> int:
        """Runs every timer set so far at once (as if their time had come),
        then what they queued; how many ran."""
        timers = list(self.timers)
        self.timers.clear()
        for _delay, fn, args in timers:
            fn(*args)
        self.run()
        return len(timers)

    def run(self, limit: int = 10000) -> int:
        """Runs queued calls (and the ones they queue) until none is left;
        at most `limit`, so a device that keeps rescheduling itself fails
        the test instead of hanging it."""
        count = 0
        while self.calls:
            if count >= limit:
                raise AssertionError(f"the device queued more than {limit} worker calls")
            fn, args = self.calls.pop(0)
            fn(*args)
            count += 1
        self.ran += count
        return count

    def close(self) -> None:
        self.calls.clear()


class SocketTap:
    """A TAP device stand-in for virtio-net tests without root: whole frames
    (each behind its 12-byte virtio-net header, as IFF_VNET_HDR gives them)
    through an AF_UNIX SOCK_SEQPACKET pair. The device reads and writes one
    end (`fd`, read_frame, write_frame, set_offload: a Tap's interface); the
    test the other, with send() and received()."""

    def __init__(self, name: str = "sockettap0") -> None:
        self._device, self._host = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self._device.setblocking(False)
        self._host.setblocking(False)
        self.fd = self._device.fileno()
        self.name = name
        self.offload = 0
        self.offloads: List[int] = []          # every TUNSETOFFLOAD value, in order
        self.refuse_writes: Optional[int] = None   # an errno write_frame raises, if set

    # the device's side
    def read_frame(self, buffer) -> Optional[int]:
        try:
            return self._device.recv_into(buffer)
        except BlockingIOError:
            return None

    def write_frame(self, parts) -> int:
        if self.refuse_writes is not None:
            raise OSError(self.refuse_writes, os.strerror(self.refuse_writes))
        return self._device.sendmsg(parts)

    def set_offload(self, flags: int) -> None:
        self.offload = flags
        self.offloads.append(flags)

    # the test's side
    def send(self, frame: bytes, header: bytes = bytes(12)) -> bool:
        """Queues one frame for the device; False when the socket is full
        (a TAP's queue drops then too)."""
        try:
            self._host.send(header + frame)
        except BlockingIOError:
            return False
        return True

    def received(self) -> List[bytes]:
        """The frames the device wrote since the last call, headers included."""
        frames = []
        while True:
            try:
                frames.append(self._host.recv(1 << 17))
            except BlockingIOError:
                return frames

    def close(self) -> None:
        if self.fd >= 0:
            self._device.close()
            self._host.close()
            self.fd = -1


class TestContext:
    """A DeviceContext for tests: same attributes, nothing threaded."""

    __test__ = False      # not a pytest class

    def __init__(self, memory, irq: Optional[InterruptLine], name: str = "virtio",
                 registers=None) -> None:
        self.name = name
        self.memory = memory
        self.irq = irq
        self.registers = registers       # the RegisterState the device publishes cached reads to
        self.worker = InlineWorker()
        self.failures: List[str] = []

    def fail(self, message: str) -> None:
        self.failures.append(message)

    def close(self) -> None:
        self.worker.close()


class VirtioBench:
    """A virtio device behind its transport, with guest RAM and a driver."""

    def __init__(self, device, memory_size: int = DEFAULT_MEMORY, irq: bool = True,
                 memory: Optional[GuestMemory] = None) -> None:
        self.memory = memory if memory is not None else GuestMemory([(0, memory_size)])
        self._own_memory = memory is None
        self.levels: List[bool] = []
        line = InterruptLine(self.levels.append, "virtio-test") if irq else None
        self.device = device
        self.transport = MmioTransport(device)
        registers = Delivery.declared_by(self.transport, spec.MMIO_SLOT_SIZE, pio=False).registers
        self.context = TestContext(self.memory, line, registers=registers)
        self.transport.attach(self.context)
        self.driver = Driver(self)

    @property
    def failures(self) -> List[str]:
        return self.context.failures

    @property
    def irq_level(self) -> bool:
        return bool(self.levels and self.levels[-1])

    def run(self) -> int:
        """Runs what the device handed to its worker."""
        return self.context.worker.run()

    def close(self) -> None:
        self.transport.close()
        self.context.close()
        if self._own_memory:
            self.memory.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class Driver:
    """A well-behaved virtio-mmio driver (virtio 1.2, 3.1 and 4.2.3), step by step."""

    def __init__(self, bench: VirtioBench) -> None:
        self.bench = bench
        self.transport = bench.transport
        self.memory = bench.memory
        self.queues: List[DriverQueue] = []

    # --- registers ---------------------------------------------------------------
    def read(self, offset: int) -> int:
        return int.from_bytes(self.transport.read(offset, 4), "little")

    def write(self, offset: int, value: int) -> None:
        self.transport.write(offset, (value & 0xFFFFFFFF).to_bytes(4, "little"))

    @property
    def status(self) -> int:
        return self.read(spec.MMIO_STATUS)

    def set_status(self, bits: int) -> int:
        """Adds `bits` to the status; returns the status read back."""
        self.write(spec.MMIO_STATUS, self.status | bits)
        return self.status

    def device_features(self) -> int:
        self.write(spec.MMIO_DEVICE_FEATURES_SEL, 0)
        low = self.read(spec.MMIO_DEVICE_FEATURES)
        self.write(spec.MMIO_DEVICE_FEATURES_SEL, 1)
        return low | self.read(spec.MMIO_DEVICE_FEATURES) << 32

    def write_features(self, features: int) -> None:
        for select in (0, 1):
            self.write(spec.MMIO_DRIVER_FEATURES_SEL, select)
            self.write(spec.MMIO_DRIVER_FEATURES, features >> (32 * select))

    def config(self, offset: int, size: int) -> bytes:
        return self.transport.read(spec.MMIO_CONFIG + offset, size)

    def ack_interrupt(self) -> int:
        status = self.read(spec.MMIO_INTERRUPT_STATUS)
        self.write(spec.MMIO_INTERRUPT_ACK, status)
        return status

    # --- initialisation ------------------------------------------------------------
    def reset(self) -> None:
        self.write(spec.MMIO_STATUS, 0)
        self.queues = []

    def negotiate(self, features: Optional[int] = None) -> bool:
        """Reset, ACKNOWLEDGE, DRIVER, features (all offered by default),
        FEATURES_OK; True when the device kept FEATURES_OK."""
        self.reset()
        self.set_status(spec.ACKNOWLEDGE)
        self.set_status(spec.DRIVER)
        offered = self.device_features()
        self.write_features(offered if features is None else features)
        return bool(self.set_status(spec.FEATURES_OK) & spec.FEATURES_OK)

    def setup_queue(self, index: int, size: int, base: int) -> "DriverQueue":
        """Lays out queue `index` at `base` (page-aligned areas) and makes it ready."""
        queue = DriverQueue(self, index, size, base)
        self.write(spec.MMIO_QUEUE_SEL, index)
        self.write(spec.MMIO_QUEUE_NUM, size)
        for low, address in ((spec.MMIO_QUEUE_DESC_LOW, queue.desc),
                             (spec.MMIO_QUEUE_DRIVER_LOW, queue.avail),
                             (spec.MMIO_QUEUE_DEVICE_LOW, queue.used)):
            self.write(low, address)
            self.write(low + 4, address >> 32)
        self.write(spec.MMIO_QUEUE_READY, 1)
        self.queues.append(queue)
        return queue

    def start(self, sizes: Optional[Sequence[int]] = None, base: int = 0x10000,
              features: Optional[int] = None) -> List["DriverQueue"]:
        """The whole initialisation: negotiate, one queue per size (default
        8 entries for each of the device's queues) laid out from `base`,
        DRIVER_OK. Returns the queues."""
        if not self.negotiate(features):
            raise AssertionError(f"the device refused FEATURES_OK (status {self.status:#x})")
        sizes = [8] * self.bench.device.queue_count if sizes is None else sizes
        queues = []
        for index, size in enumerate(sizes):
            queue = self.setup_queue(index, size, base)
            queues.append(queue)
            base = _align(queue.end, PAGE)
        self.set_status(spec.DRIVER_OK)
        return queues

    @property
    def event_idx(self) -> bool:
        return bool(self.transport.negotiated >> spec.F_RING_EVENT_IDX & 1)


def _align(value: int, alignment: int) -> int:
    return -(-value // alignment) * alignment


class DriverQueue:
    """The driver's side of one split queue in guest memory."""

    def __init__(self, driver: Optional[Driver], index: int, size: int, base: int,
                 areas: Optional[Tuple[int, int, int]] = None, memory=None) -> None:
        """The areas follow each other from `base`, or are the (desc, avail,
        used) addresses given in `areas` (then left as they are in memory).
        Without a driver (`memory` given instead) the queue only writes rings
        into memory, for a guest to hand to its device; kick() needs one."""
        self.driver = driver
        self.memory = driver.memory if memory is None else memory
        self.index = index
        self.size = size
        desc_bytes, avail_bytes, used_bytes = ring_sizes(size)
        if areas is None:
            self.desc = base
            self.avail = _align(self.desc + desc_bytes, 2)
            self.used = _align(self.avail + avail_bytes, 4)
            self.end = self.used + used_bytes
            self.memory.fill(self.desc, self.end - self.desc)
        else:
            self.desc, self.avail, self.used = areas
            self.end = max(self.desc + desc_bytes, self.avail + avail_bytes, self.used + used_bytes)
        self.free = list(range(size))
        self.avail_idx = 0
        self.last_used = 0
        self.published: List[int] = []

    # --- building chains ---------------------------------------------------------
    def write_descriptor(self, index: int, addr: int, length: int, flags: int, following: int = 0,
                         table: Optional[int] = None) -> None:
        """Writes one descriptor, in the queue's table or in an indirect `table`."""
        base = self.desc if table is None else table
        self.memory.write(base + spec.DESC_SIZE * index, _DESCRIPTOR.pack(addr, length, flags, following))

    def publish(self, head: int) -> None:
        """Makes `head` available (whatever it points at) and advances the index."""
        self.memory.write_u16(self.avail + 4 + 2 * (self.avail_idx % self.size), head)
        self.avail_idx = (self.avail_idx + 1) & 0xFFFF
        self.memory.write_u16(self.avail + 2, self.avail_idx)
        self.published.append(head)

    def add(self, buffers: Sequence[Tuple[int, int, bool]], indirect_table: Optional[int] = None,
            publish: bool = True) -> int:
        """A chain of (addr, length, writable) buffers, readable ones first;
        through an indirect table at `indirect_table` if given. Returns its head."""
        if indirect_table is not None:
            for position, (addr, length, writable) in enumerate(buffers):
                last = position == len(buffers) - 1
                flags = (spec.DESC_F_WRITE if writable else 0) | (0 if last else spec.DESC_F_NEXT)
                self.write_descriptor(position, addr, length, flags, position + 1, table=indirect_table)
            head = self.free.pop(0)
            self.write_descriptor(head, indirect_table, spec.DESC_SIZE * len(buffers), spec.DESC_F_INDIRECT)
        else:
            if len(buffers) > len(self.free):
                raise ValueError("not enough free descriptors")
            indices = [self.free.pop(0) for _ in buffers]
            for position, (addr, length, writable) in enumerate(buffers):
                last = position == len(buffers) - 1
                flags = (spec.DESC_F_WRITE if writable else 0) | (0 if last else spec.DESC_F_NEXT)
                self.write_descriptor(indices[position], addr, length, flags,
                                      0 if last else indices[position + 1])
            head = indices[0]
        if publish:
            self.publish(head)
        return head

    def kick(self) -> None:
        self.driver.write(spec.MMIO_QUEUE_NOTIFY, self.index)

    # --- completions -------------------------------------------------------------------
    @property
    def used_idx(self) -> int:
        return self.memory.read_u16(self.used + 2)

    def take_used(self) -> List[Tuple[int, int]]:
        """(head, length) of the chains used since the last call; their
        descriptors go back to the free list."""
        done = []
        while self.last_used != self.used_idx:
            slot = self.used + 4 + 8 * (self.last_used % self.size)
            head, length = struct.unpack("<II", self.memory.read(slot, 8))
            done.append((head, length))
            self._free_chain(head)
            self.last_used = (self.last_used + 1) & 0xFFFF
        return done

    def _free_chain(self, head: int) -> None:
        index, seen = head, 0
        while 0 <= index < self.size and seen < self.size:
            if index not in self.free:
                self.free.append(index)
            _addr, _length, flags, following = _DESCRIPTOR.unpack(
                self.memory.read(self.desc + spec.DESC_SIZE * index, spec.DESC_SIZE))
            if not flags & spec.DESC_F_NEXT:
                return
            index, seen = following, seen + 1

    # --- suppression -------------------------------------------------------------------
    def set_no_interrupt(self, on: bool) -> None:
        self.memory.write_u16(self.avail, spec.AVAIL_F_NO_INTERRUPT if on else 0)

    def set_used_event(self, index: int) -> None:
        self.memory.write_u16(self.avail + 4 + 2 * self.size, index & 0xFFFF)

    @property
    def avail_event(self) -> int:
        return self.memory.read_u16(self.used + 4 + 8 * self.size)

    @property
    def used_flags(self) -> int:
        return self.memory.read_u16(self.used)


# ============================================================ strategies

@dataclass(frozen=True)
class Buffer:
    """One buffer of a well-formed chain."""

    addr: int
    length: int
    writable: bool


def buffers(memory_size: int, data_start: int, max_length: int = 4096,
            writable: Optional[bool] = None) -> st.SearchStrategy[Buffer]:
    """Buffers inside guest RAM at or above `data_start` (below it lie the rings)."""
    @st.composite
    def build(draw):
        length = draw(st.integers(1, max_length))
        addr = draw(st.integers(data_start, memory_size - length))
        direction = draw(st.booleans()) if writable is None else writable
        return Buffer(addr, length, direction)
    return build()


def chain_specs(memory_size: int = DEFAULT_MEMORY, data_start: int = 0x40000, max_buffers: int = 4,
                max_length: int = 4096) -> st.SearchStrategy[List[Buffer]]:
    """Well-formed chains: readable buffers, then writable ones."""
    @st.composite
    def build(draw):
        readable = draw(st.lists(buffers(memory_size, data_start, max_length, False), max_size=max_buffers))
        writable = draw(st.lists(buffers(memory_size, data_start, max_length, True),
                                 min_size=0 if readable else 1, max_size=max_buffers))
        return readable + writable
    return build()


@dataclass
class RawDescriptor:
    """A descriptor exactly as it lands in guest memory."""

    addr: int
    length: int
    flags: int
    next: int


@dataclass
class HostileChain:
    """A descriptor table (some entries), maybe an indirect table, and the
    head to publish: anything a driver could write."""

    head: int
    descriptors: dict = field(default_factory=dict)          # index -> RawDescriptor
    indirect_addr: Optional[int] = None
    indirect: List[RawDescriptor] = field(default_factory=list)
    avail_jump: int = 0        # added to the available index on top of the one entry

    def install(self, queue: DriverQueue) -> None:
        """Writes the tables into guest memory and publishes the head."""
        for index, d in self.descriptors.items():
            queue.write_descriptor(index, d.addr, d.length, d.flags, d.next)
        for index, d in enumerate(self.indirect):
            if queue.memory.contains(self.indirect_addr + spec.DESC_SIZE * index, spec.DESC_SIZE):
                queue.write_descriptor(index, d.addr, d.length, d.flags, d.next, table=self.indirect_addr)
        queue.publish(self.head)
        if self.avail_jump:
            # The entries the jump makes available are published too, whatever they hold.
            for offset in range(min(self.avail_jump, queue.size)):
                slot = queue.avail + 4 + 2 * ((queue.avail_idx + offset) % queue.size)
                queue.published.append(queue.memory.read_u16(slot))
            queue.avail_idx = (queue.avail_idx + self.avail_jump) & 0xFFFF
            queue.memory.write_u16(queue.avail + 2, queue.avail_idx)


def _addresses(memory_size: int, data_start: int, floor: int = 0) -> st.SearchStrategy[int]:
    """In RAM, at its edges, past its end, in the ring area (down to
    `floor`), and absurd."""
    return st.one_of(
        st.integers(data_start, memory_size - 1),
        st.integers(memory_size - 64, memory_size + 64),
        st.integers(floor, data_start),
        st.sampled_from([memory_size, 0xFEB00000, 0xFFFFFFFF, 1 << 32, (1 << 64) - 1,
                         (1 << 64) - 16] + ([0] if floor == 0 else [])),
    )


def _lengths() -> st.SearchStrategy[int]:
    return st.one_of(st.integers(0, 4096), st.sampled_from([0, 1, 15, 16, 17, 0xFFFF, 0x7FFFFFFF,
                                                             0x80000000, 0xFFFFFFFF]))


def _flags() -> st.SearchStrategy[int]:
    return st.one_of(st.integers(0, 7), st.integers(0, 0xFFFF))


def raw_descriptors(queue_size: int, memory_size: int, data_start: int,
                    floor: int = 0) -> st.SearchStrategy[RawDescriptor]:
    """Any descriptor: addresses and lengths in and out of RAM, every flag
    combination, `next` inside and past the table."""
    return st.builds(RawDescriptor, _addresses(memory_size, data_start, floor), _lengths(), _flags(),
                     st.one_of(st.integers(0, queue_size - 1), st.integers(0, 0xFFFF)))


def hostile_chains(queue_size: int, memory_size: int = DEFAULT_MEMORY, data_start: int = 0x40000,
                   indirect_area: Optional[int] = None, floor: int = 0) -> st.SearchStrategy[HostileChain]:
    """Descriptor tables that break the rules (and some that keep them):
    loops, indices past the table, nested indirect tables, indirect with
    NEXT, buffers outside RAM, readable after writable, zero and 4 GiB
    lengths, available indices that jump. `indirect_area` is a spare
    RAM area for indirect tables (default: just below the end of RAM);
    no address in RAM below `floor` (where a guest keeps its code) is used."""
    table_area = memory_size - 16 * 64 if indirect_area is None else indirect_area

    @st.composite
    def build(draw):
        head = draw(st.one_of(st.integers(0, queue_size - 1), st.integers(0, 0xFFFF)))
        indices = draw(st.lists(st.integers(0, queue_size - 1), max_size=min(queue_size, 8), unique=True))
        descriptors = {index: draw(raw_descriptors(queue_size, memory_size, data_start, floor))
                       for index in indices + ([head] if head < queue_size else [])}
        chain = HostileChain(head, descriptors)
        if draw(st.booleans()):
            # Aim one descriptor at an indirect table, maybe a broken one.
            chain.indirect_addr = draw(st.one_of(st.just(table_area),
                                                 _addresses(memory_size, data_start, floor)))
            nested = st.builds(RawDescriptor, st.just(table_area), st.integers(1, 8).map(lambda n: 16 * n),
                               st.sampled_from([spec.DESC_F_INDIRECT, spec.DESC_F_INDIRECT | spec.DESC_F_NEXT]),
                               st.integers(0, 8))
            entries = draw(st.lists(st.one_of(raw_descriptors(8, memory_size, data_start, floor), nested),
                                    min_size=1, max_size=8))
            chain.indirect = entries
            pointer = descriptors.get(head) if head < queue_size else None
            if pointer is not None:
                pointer.addr = chain.indirect_addr
                pointer.flags |= spec.DESC_F_INDIRECT
                pointer.length = draw(st.one_of(st.just(16 * len(entries)), st.integers(1, 8).map(lambda n: 16 * n),
                                                _lengths()))
                if draw(st.booleans()):
                    pointer.flags &= ~spec.DESC_F_NEXT
        chain.avail_jump = draw(st.one_of(st.just(0), st.integers(0, 0xFFFF)))
        return chain
    return build()


# ============================================================ driver actions

@dataclass(frozen=True)
class Action:
    """One register-level step of a driver (see driver_actions)."""

    kind: str
    offset: int = 0
    value: int = 0
    size: int = 4

    def apply(self, driver: Driver) -> Optional[bytes]:
        transport = driver.transport
        if self.kind == "read":
            return transport.read(self.offset, self.size)
        if self.kind == "run":
            driver.bench.run()
            return None
        transport.write(self.offset, (self.value & ((1 << (8 * self.size)) - 1)).to_bytes(self.size, "little"))
        return None


_STATUS_BITS = [spec.ACKNOWLEDGE, spec.DRIVER, spec.FEATURES_OK, spec.DRIVER_OK,
                spec.DEVICE_NEEDS_RESET, spec.FAILED]
_REGISTERS = [spec.MMIO_MAGIC_VALUE, spec.MMIO_VERSION, spec.MMIO_DEVICE_ID, spec.MMIO_VENDOR_ID,
              spec.MMIO_DEVICE_FEATURES, spec.MMIO_DEVICE_FEATURES_SEL, spec.MMIO_DRIVER_FEATURES,
              spec.MMIO_DRIVER_FEATURES_SEL, spec.MMIO_QUEUE_SEL, spec.MMIO_QUEUE_NUM_MAX,
              spec.MMIO_QUEUE_NUM, spec.MMIO_QUEUE_READY, spec.MMIO_QUEUE_NOTIFY,
              spec.MMIO_INTERRUPT_STATUS, spec.MMIO_INTERRUPT_ACK, spec.MMIO_STATUS,
              spec.MMIO_QUEUE_DESC_LOW, spec.MMIO_QUEUE_DESC_HIGH, spec.MMIO_QUEUE_DRIVER_LOW,
              spec.MMIO_QUEUE_DRIVER_HIGH, spec.MMIO_QUEUE_DEVICE_LOW, spec.MMIO_QUEUE_DEVICE_HIGH,
              spec.MMIO_SHM_SEL, spec.MMIO_SHM_LEN_LOW, spec.MMIO_QUEUE_RESET,
              spec.MMIO_CONFIG_GENERATION]


def driver_actions(queue_count: int = 1, memory_size: int = DEFAULT_MEMORY,
                   config_size: int = 64) -> st.SearchStrategy[Action]:
    """Register-level actions in any order: status writes (each bit, any
    byte, 0 = reset), feature words, queue selection, sizes and addresses
    (in RAM, at its end, outside it), QueueReady, notifications (of real
    and absent queues), interrupt acks, reads of every register and of the
    configuration space, odd sizes and offsets, and "run" (let the
    device's worker run)."""
    def write(offset, values, size=4):
        return st.builds(Action, st.just("write"), st.just(offset), values, st.just(size))

    status = st.one_of(st.sampled_from([0] + _STATUS_BITS), st.integers(0, 0xFF),
                       st.lists(st.sampled_from(_STATUS_BITS), min_size=1, max_size=4)
                       .map(lambda bits: sum(set(bits))))
    address = st.one_of(st.integers(0, memory_size // PAGE - 1).map(lambda page: page * PAGE),
                        st.integers(0, memory_size), st.sampled_from([memory_size - 8, 0xFFFFFFFF]))
    queue = st.one_of(st.integers(0, queue_count), st.integers(0, 0xFFFFFFFF))
    return st.one_of(
        write(spec.MMIO_STATUS, status),
        write(spec.MMIO_DRIVER_FEATURES_SEL, st.integers(0, 2)),
        write(spec.MMIO_DRIVER_FEATURES, st.one_of(st.sampled_from([0, 1, 1 << 28, 1 << 29, 0x30000000]),
                                                   st.integers(0, 0xFFFFFFFF))),
        write(spec.MMIO_DEVICE_FEATURES_SEL, st.integers(0, 2)),
        write(spec.MMIO_QUEUE_SEL, queue),
        write(spec.MMIO_QUEUE_NUM, st.one_of(st.sampled_from([0, 1, 2, 3, 8, 256, 1024, 1025, 4096]),
                                             st.integers(0, 0xFFFFFFFF))),
        write(spec.MMIO_QUEUE_DESC_LOW, address), write(spec.MMIO_QUEUE_DRIVER_LOW, address),
        write(spec.MMIO_QUEUE_DEVICE_LOW, address),
        write(spec.MMIO_QUEUE_DESC_HIGH, st.sampled_from([0, 1])),
        write(spec.MMIO_QUEUE_READY, st.sampled_from([0, 1, 2])),
        write(spec.MMIO_QUEUE_NOTIFY, queue),
        write(spec.MMIO_INTERRUPT_ACK, st.integers(0, 3)),
        st.builds(Action, st.just("read"), st.sampled_from(_REGISTERS), st.just(0), st.just(4)),
        st.builds(Action, st.just("read"), st.integers(0x100, 0x100 + config_size),
                  st.just(0), st.sampled_from([1, 2, 4, 8])),
        st.builds(Action, st.sampled_from(["read", "write"]), st.integers(0, 0x1F8),
                  st.integers(0, 0xFFFFFFFF), st.sampled_from([1, 2, 3, 4, 8])),
        st.just(Action("run")),
    )
