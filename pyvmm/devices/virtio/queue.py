"""Split virtqueues (virtio 1.2, 2.7), from the device's side.

The driver owns three areas in guest memory: the descriptor table, the
available ring (its "driver area") and the used ring (its "device area").
A SplitQueue reads chains of descriptors the driver made available and
returns them through the used ring. Everything it reads comes from a
hostile guest, so:

- the three areas are checked against guest RAM once, when the queue is
  made ready (RAM does not move while the VM runs);
- every buffer of a chain is checked against guest RAM when the chain is
  popped, before the device touches any of its bytes;
- a chain is bounded: at most `size` descriptors in the descriptor table,
  at most `size` entries in an indirect table, at most `size` buffers in
  all and less than 4 GiB in total, so no loop can hang the device thread.

Anything the specification forbids the driver to do (an index past the
table, an available index that jumps by more than the queue size, a
readable buffer after a writable one, an indirect table inside an indirect
table or next to NEXT, a buffer outside RAM) raises QueueError: the
transport then sets DEVICE_NEEDS_RESET and leaves the queue alone.

Memory is reached only through the `memory` object given (the device
context's guest memory), which refuses any access outside guest RAM.
"""

from __future__ import annotations

import struct
import threading
from typing import Iterator, List, Optional, Tuple

from . import spec

_DESCRIPTOR = struct.Struct("<QIHH")       # addr, len, flags, next
_USED_ELEMENT = struct.Struct("<II")       # id, len
MAX_CHAIN_BYTES = 1 << 32                  # 2.7.13.1: a chain is shorter than 2^32 bytes

# x86 keeps stores in order and loads in order, but may let a load pass an
# earlier store. Where the ring protocol needs a full barrier (publish the
# used index, then read the driver's event index or flags), taking a lock
# gives one: its atomic instruction drains the store buffer.
_FENCE = threading.Lock()


def full_barrier() -> None:
    with _FENCE:
        pass


class QueueError(Exception):
    """The driver broke a rule of the virtqueue; the device needs a reset."""


def ring_sizes(size: int) -> Tuple[int, int, int]:
    """Bytes of the descriptor table, available ring and used ring of a
    queue of `size` entries, with the event index fields (2.7)."""
    return spec.DESC_SIZE * size, 6 + 2 * size, 6 + 8 * size


def need_event(event: int, new: int, old: int) -> bool:
    """vring_need_event (2.7.10): did the index move past `event` going
    from `old` to `new`? All three are 16-bit ring indices."""
    return (new - event - 1) & 0xFFFF < (new - old) & 0xFFFF


class DescriptorChain:
    """One request: the buffers of a chain, readable ones first.

    `readable` and `writable` are lists of (guest address, length), each
    already checked to lie in guest RAM; zero-length buffers are left out.
    """

    __slots__ = ("head", "readable", "writable", "readable_length", "writable_length", "_memory")

    def __init__(self, memory, head: int, readable: List[Tuple[int, int]],
                 writable: List[Tuple[int, int]]) -> None:
        self._memory = memory
        self.head = head
        self.readable = readable
        self.writable = writable
        self.readable_length = sum(length for _, length in readable)
        self.writable_length = sum(length for _, length in writable)

    def read(self, offset: int = 0, length: Optional[int] = None) -> bytes:
        """The readable bytes [offset, offset + length) (to the end by default)."""
        return b"".join(bytes(view) for view in self.readable_views(offset, length))

    def readable_views(self, offset: int = 0, length: Optional[int] = None) -> List[memoryview]:
        """Zero-copy views of readable bytes [offset, offset + length)."""
        return [self._memory.view(addr, n) for addr, n in _span(self.readable, offset, length)]

    def writable_views(self, offset: int = 0, length: Optional[int] = None) -> List[memoryview]:
        """Zero-copy views of writable bytes [offset, offset + length)."""
        return [self._memory.view(addr, n) for addr, n in _span(self.writable, offset, length)]

    def write(self, data: bytes, offset: int = 0) -> int:
        """Copies `data` into the writable buffers from `offset`; returns the
        bytes written (fewer when the buffers end first)."""
        done = 0
        for addr, n in _span(self.writable, offset, len(data)):
            self._memory.write(addr, data[done:done + n])
            done += n
        return done

    def __repr__(self) -> str:
        return (f"DescriptorChain(head={self.head}, readable={self.readable_length}, "
                f"writable={self.writable_length})")


def _span(buffers: List[Tuple[int, int]], offset: int, length: Optional[int]) -> Iterator[Tuple[int, int]]:
    """(addr, n) pieces of the bytes [offset, offset + length) of `buffers`."""
    remaining = None if length is None else max(0, length)
    for addr, n in buffers:
        if remaining == 0:
            return
        if offset >= n:
            offset -= n
            continue
        take = n - offset if remaining is None else min(n - offset, remaining)
        yield addr + offset, take
        offset = 0
        if remaining is not None:
            remaining -= take


class SplitQueue:
    """The device side of one split virtqueue.

    `size` entries; `desc`, `avail` and `used` are the guest addresses of
    the three areas; `event_idx` and `indirect` say whether
    VIRTIO_F_RING_EVENT_IDX and VIRTIO_F_INDIRECT_DESC were negotiated.
    Raises QueueError when the configuration itself is invalid.

    Not thread-safe: one thread (the device's worker) pops, pushes and
    decides interrupts.
    """

    def __init__(self, memory, size: int, desc: int, avail: int, used: int, *,
                 event_idx: bool = False, indirect: bool = False) -> None:
        if not (0 < size <= spec.MAX_QUEUE_SIZE and size & (size - 1) == 0):
            raise QueueError(f"queue size {size} is not a power of two up to {spec.MAX_QUEUE_SIZE}")
        for name, addr, length in zip(("descriptor table", "available ring", "used ring"),
                                      (desc, avail, used), ring_sizes(size)):
            if not memory.contains(addr, length):
                raise QueueError(f"{name} at {addr:#x} ({length} bytes) is outside guest RAM")
        self.memory = memory
        self.size = size
        self.desc, self.avail, self.used = desc, avail, used
        self.event_idx = event_idx
        self.indirect = indirect
        self.last_avail = 0          # next available entry to pop
        self.avail_seen = 0          # the driver's available index when last read
        self.used_idx = 0            # next used entry to fill
        self.signalled_used = 0      # used_idx when the last interrupt was decided
        self.signalled_valid = False
        self._avail_ring = avail + 4
        self._used_ring = used + 4
        self._used_event = avail + 4 + 2 * size      # written by the driver
        self._avail_event = used + 4 + 8 * size      # written by the device

    # --- the available ring ------------------------------------------------------
    def _read_avail_index(self) -> int:
        index = self.memory.read_u16(self.avail + 2)
        ahead = (index - self.last_avail) & 0xFFFF
        if ahead > self.size:
            raise QueueError(f"available index moved to {index}, {ahead} entries past "
                             f"{self.last_avail} in a queue of {self.size}")
        self.avail_seen = index
        return index

    def has_available(self) -> bool:
        return self._read_avail_index() != self.last_avail

    def pop(self) -> Optional[DescriptorChain]:
        """The next available chain, or None when the driver has made none."""
        if self.last_avail == self.avail_seen and self._read_avail_index() == self.last_avail:
            return None
        head = self.memory.read_u16(self._avail_ring + 2 * (self.last_avail % self.size))
        chain = self._walk(head)
        self.last_avail = (self.last_avail + 1) & 0xFFFF
        return chain

    def _walk(self, head: int) -> DescriptorChain:
        memory = self.memory
        readable: List[Tuple[int, int]] = []
        writable: List[Tuple[int, int]] = []
        table, entries, index = self.desc, self.size, head
        steps = buffers = total = 0
        in_indirect = seen_writable = False
        while True:
            if index >= entries:
                where = "indirect table" if in_indirect else "descriptor table"
                raise QueueError(f"descriptor {index} past the end of the {where} ({entries} entries)")
            steps += 1
            if steps > entries:
                raise QueueError(f"chain at head {head} is longer than its table (a loop?)")
            addr, length, flags, following = _DESCRIPTOR.unpack(memory.read(table + spec.DESC_SIZE * index,
                                                                           spec.DESC_SIZE))
            if flags & spec.DESC_F_INDIRECT:
                if not self.indirect:
                    raise QueueError("indirect descriptor, but VIRTIO_F_INDIRECT_DESC was not negotiated")
                if in_indirect:
                    raise QueueError("indirect descriptor inside an indirect table")
                if flags & spec.DESC_F_NEXT:
                    raise QueueError("indirect descriptor with NEXT set")
                if length == 0 or length % spec.DESC_SIZE or length // spec.DESC_SIZE > self.size:
                    raise QueueError(f"indirect table of {length} bytes (a multiple of 16, "
                                     f"at most {self.size} entries)")
                if not memory.contains(addr, length):
                    raise QueueError(f"indirect table at {addr:#x} ({length} bytes) is outside guest RAM")
                table, entries, index, steps, in_indirect = addr, length // spec.DESC_SIZE, 0, 0, True
                continue
            if flags & spec.DESC_F_WRITE:
                seen_writable = True
            elif seen_writable:
                raise QueueError("a readable buffer follows a writable one")
            if length:
                (writable if seen_writable else readable).append((addr, length))
                if not memory.contains(addr, length):
                    raise QueueError(f"buffer at {addr:#x} ({length} bytes) is outside guest RAM")
                buffers += 1
                total += length
                if buffers > self.size or total >= MAX_CHAIN_BYTES:
                    raise QueueError(f"chain at head {head} has more than {self.size} buffers "
                                     "or 4 GiB")
            if not flags & spec.DESC_F_NEXT:
                return DescriptorChain(memory, head, readable, writable)
            index = following

    # --- the used ring ---------------------------------------------------------------
    def push(self, head: int, written: int) -> None:
        """Returns chain `head` to the driver with `written` bytes written."""
        slot = self._used_ring + 8 * (self.used_idx % self.size)
        self.memory.write(slot, _USED_ELEMENT.pack(head, written))
        self.used_idx = (self.used_idx + 1) & 0xFFFF
        self.memory.write_u16(self.used + 2, self.used_idx)   # after the element: x86 keeps store order

    def needs_interrupt(self) -> bool:
        """Whether the driver wants an interrupt for the entries pushed since
        the last call (2.7.7, 2.7.10): its used_event index, or the
        NO_INTERRUPT flag without event indices."""
        full_barrier()        # the used index is published before the driver's fields are read
        if self.event_idx:
            old, new, valid = self.signalled_used, self.used_idx, self.signalled_valid
            self.signalled_used, self.signalled_valid = new, True
            if not valid:
                return True
            return need_event(self.memory.read_u16(self._used_event), new, old)
        return not self.memory.read_u16(self.avail) & spec.AVAIL_F_NO_INTERRUPT

    # --- notifications from the driver ------------------------------------------------
    def suppress_notifications(self) -> None:
        """While the device is busy with the queue: no need to be notified."""
        if not self.event_idx:
            self.memory.write_u16(self.used, spec.USED_F_NO_NOTIFY)

    def allow_notifications(self) -> bool:
        """Asks for a notification at the next available entry; True when
        entries arrived meanwhile (the device must look again, or it could
        miss them: the driver saw notifications off when it added them)."""
        if self.event_idx:
            self.memory.write_u16(self._avail_event, self.avail_seen)
        else:
            self.memory.write_u16(self.used, 0)
        full_barrier()
        return self.has_available()

    def __repr__(self) -> str:
        return (f"SplitQueue(size={self.size}, desc={self.desc:#x}, avail={self.avail:#x}, "
                f"used={self.used:#x}, last_avail={self.last_avail}, used_idx={self.used_idx})")
