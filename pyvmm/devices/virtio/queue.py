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
from typing import List, Optional, Tuple

from . import spec

_DESCRIPTOR = struct.Struct("<QIHH")       # addr, len, flags, next
_USED_ELEMENT = struct.Struct("<II")       # id, len
_U16 = struct.Struct("<H")
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
    The bytes are reached through zero-copy views of guest RAM taken when
    the chain was checked.
    """

    __slots__ = ("head", "readable", "writable", "readable_length", "writable_length",
                 "_readable_views", "_writable_views")

    def __init__(self, head: int, readable: List[Tuple[int, int]], writable: List[Tuple[int, int]],
                 readable_views: List[memoryview], writable_views: List[memoryview],
                 readable_length: int, writable_length: int) -> None:
        self.head = head
        self.readable = readable
        self.writable = writable
        self._readable_views = readable_views
        self._writable_views = writable_views
        self.readable_length = readable_length
        self.writable_length = writable_length

    def read(self, offset: int = 0, length: Optional[int] = None) -> bytes:
        """The readable bytes [offset, offset + length) (to the end by default)."""
        views = _span(self._readable_views, offset, length)
        return bytes(views[0]) if len(views) == 1 else b"".join(views)

    def readable_views(self, offset: int = 0, length: Optional[int] = None) -> List[memoryview]:
        """Zero-copy views of readable bytes [offset, offset + length)."""
        return _span(self._readable_views, offset, length)

    def writable_views(self, offset: int = 0, length: Optional[int] = None) -> List[memoryview]:
        """Zero-copy views of writable bytes [offset, offset + length)."""
        return _span(self._writable_views, offset, length)

    def write(self, data: bytes, offset: int = 0) -> int:
        """Copies `data` into the writable buffers from `offset`; returns the
        bytes written (fewer when the buffers end first)."""
        done = 0
        for view in _span(self._writable_views, offset, len(data)):
            count = len(view)
            view[:] = data[done:done + count]
            done += count
        return done

    def __repr__(self) -> str:
        return (f"DescriptorChain(head={self.head}, readable={self.readable_length}, "
                f"writable={self.writable_length})")


def _span(views: List[memoryview], offset: int, length: Optional[int]) -> List[memoryview]:
    """The pieces of `views` covering bytes [offset, offset + length)."""
    if offset == 0 and length is None:
        return list(views)
    pieces = []
    remaining = None if length is None else max(0, length)
    for view in views:
        if remaining == 0:
            break
        size = len(view)
        if offset >= size:
            offset -= size
            continue
        end = size if remaining is None else min(size, offset + remaining)
        pieces.append(view[offset:end])
        if remaining is not None:
            remaining -= end - offset
        offset = 0
    return pieces


class SplitQueue:
    """The device side of one split virtqueue.

    `size` entries; `desc`, `avail` and `used` are the guest addresses of
    the three areas; `event_idx` and `indirect` say whether
    VIRTIO_F_RING_EVENT_IDX and VIRTIO_F_INDIRECT_DESC were negotiated.
    Raises QueueError when the configuration itself is invalid.

    The three areas are held as views of guest RAM (checked once, here);
    release() gives them back. Not thread-safe: one thread (the device's
    worker) pops, pushes and decides interrupts.
    """

    def __init__(self, memory, size: int, desc: int, avail: int, used: int, *,
                 event_idx: bool = False, indirect: bool = False) -> None:
        if not (0 < size <= spec.MAX_QUEUE_SIZE and size & (size - 1) == 0):
            raise QueueError(f"queue size {size} is not a power of two up to {spec.MAX_QUEUE_SIZE}")
        views = []
        for name, addr, length in zip(("descriptor table", "available ring", "used ring"),
                                      (desc, avail, used), ring_sizes(size)):
            if not memory.contains(addr, length):
                raise QueueError(f"{name} at {addr:#x} ({length} bytes) is outside guest RAM")
            views.append(memory.view(addr, length))
        self._desc, self._avail, self._used = views
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
        self._used_event = 4 + 2 * size      # in the available ring, written by the driver
        self._avail_event = 4 + 8 * size     # in the used ring, written by the device

    def release(self) -> None:
        """Gives the views of guest RAM back (the queue is not used afterwards)."""
        for view in (self._desc, self._avail, self._used):
            view.release()

    # --- the available ring ------------------------------------------------------
    def _read_avail_index(self) -> int:
        index = _U16.unpack_from(self._avail, 2)[0]
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
        head = _U16.unpack_from(self._avail, 4 + 2 * (self.last_avail % self.size))[0]
        chain = self._walk(head)
        self.last_avail = (self.last_avail + 1) & 0xFFFF
        return chain

    def undo_pop(self, count: int = 1) -> None:
        """Puts the last `count` chains popped back in the queue, unused (a
        device that cannot serve them yet pops them again later)."""
        self.last_avail = (self.last_avail - count) & 0xFFFF

    def _walk(self, head: int) -> DescriptorChain:
        memory, unpack_from = self.memory, _DESCRIPTOR.unpack_from
        readable: List[Tuple[int, int]] = []
        writable: List[Tuple[int, int]] = []
        readable_views: List[memoryview] = []
        writable_views: List[memoryview] = []
        table, entries, index = self._desc, self.size, head
        steps = buffers = readable_length = writable_length = 0
        in_indirect = seen_writable = False
        while True:
            if index >= entries:
                where = "indirect table" if in_indirect else "descriptor table"
                raise QueueError(f"descriptor {index} past the end of the {where} ({entries} entries)")
            steps += 1
            if steps > entries:
                raise QueueError(f"chain at head {head} is longer than its table (a loop?)")
            addr, length, flags, following = unpack_from(table, spec.DESC_SIZE * index)
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
                table = self._view(addr, length, "indirect table")
                entries, index, steps, in_indirect = length // spec.DESC_SIZE, 0, 0, True
                continue
            if flags & spec.DESC_F_WRITE:
                seen_writable = True
            elif seen_writable:
                raise QueueError("a readable buffer follows a writable one")
            if length:
                view = self._view(addr, length, "buffer")
                buffers += 1
                if seen_writable:
                    writable.append((addr, length))
                    writable_views.append(view)
                    writable_length += length
                else:
                    readable.append((addr, length))
                    readable_views.append(view)
                    readable_length += length
                if buffers > self.size or readable_length + writable_length >= MAX_CHAIN_BYTES:
                    raise QueueError(f"chain at head {head} has more than {self.size} buffers "
                                     "or 4 GiB")
            if not flags & spec.DESC_F_NEXT:
                return DescriptorChain(head, readable, writable, readable_views, writable_views,
                                       readable_length, writable_length)
            index = following

    def _view(self, addr: int, length: int, what: str) -> memoryview:
        try:
            return self.memory.view(addr, length)
        except ValueError:                  # GuestMemoryError: outside guest RAM
            raise QueueError(f"{what} at {addr:#x} ({length} bytes) is outside guest RAM") from None

    # --- the used ring ---------------------------------------------------------------
    def push(self, head: int, written: int) -> None:
        """Returns chain `head` to the driver with `written` bytes written."""
        _USED_ELEMENT.pack_into(self._used, 4 + 8 * (self.used_idx % self.size), head, written)
        self.used_idx = (self.used_idx + 1) & 0xFFFF
        _U16.pack_into(self._used, 2, self.used_idx)    # after the element: x86 keeps store order

    def push_all(self, entries: List[Tuple[int, int]]) -> None:
        """Returns several chains (head, written) at once: the driver sees the
        used index move past all of them together (the buffers of one
        merged network frame)."""
        for offset, (head, written) in enumerate(entries):
            _USED_ELEMENT.pack_into(self._used, 4 + 8 * ((self.used_idx + offset) % self.size), head, written)
        self.used_idx = (self.used_idx + len(entries)) & 0xFFFF
        _U16.pack_into(self._used, 2, self.used_idx)

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
            return need_event(_U16.unpack_from(self._avail, self._used_event)[0], new, old)
        return not _U16.unpack_from(self._avail, 0)[0] & spec.AVAIL_F_NO_INTERRUPT

    # --- notifications from the driver ------------------------------------------------
    def suppress_notifications(self) -> None:
        """While the device is busy with the queue: no need to be notified."""
        if not self.event_idx:
            _U16.pack_into(self._used, 0, spec.USED_F_NO_NOTIFY)

    def allow_notifications(self) -> bool:
        """Asks for a notification at the next available entry; True when
        entries arrived meanwhile (the device must look again, or it could
        miss them: the driver saw notifications off when it added them)."""
        if self.event_idx:
            _U16.pack_into(self._used, self._avail_event, self.avail_seen)
        else:
            _U16.pack_into(self._used, 0, 0)
        full_barrier()
        return self.has_available()

    def __repr__(self) -> str:
        return (f"SplitQueue(size={self.size}, desc={self.desc:#x}, avail={self.avail:#x}, "
                f"used={self.used:#x}, last_avail={self.last_avail}, used_idx={self.used_idx})")
