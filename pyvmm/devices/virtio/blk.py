"""virtio block device (virtio 1.2, 5.2) on a raw image.

A request is a chain: a 16-byte header (type, reserved, sector) in the
readable bytes, then data, then one writable status byte, the last
writable byte. The layout of descriptors does not matter (the device reads
by byte offset, as 2.6.4 asks). Requests served:

    IN            read sectors into the writable data bytes
    OUT           write the readable data bytes (IOERR on a read-only disk)
    FLUSH         fdatasync the image
    GET_ID        the disk's id (20 bytes, NUL-padded)
    DISCARD       punch the ranges out (they read as zeroes afterwards)
    WRITE_ZEROES  zero the ranges (punching them out with the unmap flag)
    anything else UNSUPP

Data transfers must be whole sectors inside the disk, or the request gets
IOERR and the image is untouched; a read-only disk never writes its image.
A chain without the 16 header bytes or the status byte is not a request
the device can answer: DEVICE_NEEDS_RESET, as QEMU does. The used length
is the chain's writable byte count, as in QEMU.
"""

from __future__ import annotations

import struct

from ..state import StateReader
from . import spec
from .device import VirtioDevice
from .image import SECTOR, RawImage
from .queue import DescriptorChain, QueueError, SplitQueue

# 5.2.3 Feature bits.
F_SEG_MAX = 2
F_RO = 5
F_BLK_SIZE = 6
F_FLUSH = 9
F_DISCARD = 13
F_WRITE_ZEROES = 14

# 5.2.6 Request types and status values.
T_IN, T_OUT, T_FLUSH, T_GET_ID, T_DISCARD, T_WRITE_ZEROES = 0, 1, 4, 8, 11, 13
S_OK, S_IOERR, S_UNSUPP = 0, 1, 2
ID_BYTES = 20
WRITE_ZEROES_UNMAP = 1

HEADER = struct.Struct("<IIQ")              # type, reserved, sector
SEGMENT = struct.Struct("<QII")             # sector, num_sectors, flags
SEG_MAX = 254                               # data buffers per request (a 256-entry queue, as QEMU)
# Discard and write-zeroes ranges: at most 4 of 32 MiB per request, so one
# request (zero-filled where the file system cannot punch or zero a range)
# keeps the worker, and a VM's shutdown, waiting a fraction of a second.
MAX_SEGMENTS = 4
MAX_SEGMENT_SECTORS = 1 << 16
CONFIG = struct.Struct("<QIIIIQBBHIIIIIB3x")


def disk_ids(disks) -> list:
    """Each disk's id (its GET_ID answer): its own `id`, or disk0, disk1... by position."""
    return [disk.id if disk.id is not None else f"disk{index}" for index, disk in enumerate(disks)]


class VirtioBlock(VirtioDevice):
    device_id = spec.ID_BLOCK
    queue_count = 1
    name = "virtio-blk"

    def __init__(self, image: RawImage, disk_id: str = "", limiter=None) -> None:
        """`limiter`: a pyvmm.devices.ratelimit.RateLimiter, or None."""
        super().__init__()
        self.image = image
        self.limiter = limiter
        self._throttle_timer = None
        self.throttled = self.bytes_read = self.bytes_written = 0
        self.disk_id = disk_id.encode("ascii", "replace")[:ID_BYTES].ljust(ID_BYTES, b"\0")
        self.features = (1 << F_SEG_MAX | 1 << F_BLK_SIZE | 1 << F_FLUSH | 1 << F_DISCARD
                         | 1 << F_WRITE_ZEROES | (1 << F_RO if image.readonly else 0))
        self._config = CONFIG.pack(
            image.sectors,              # capacity, in 512-byte sectors
            0,                          # size_max: no limit
            SEG_MAX,
            0,                          # geometry (not offered)
            SECTOR,                     # blk_size
            0,                          # topology (not offered)
            0, 0, 1,                    # writeback, unused, num_queues
            MAX_SEGMENT_SECTORS, MAX_SEGMENTS, 1,          # discard: sectors, segments, alignment
            MAX_SEGMENT_SECTORS, MAX_SEGMENTS,             # write zeroes: sectors, segments
            1)                          # write_zeroes_may_unmap
        self.requests = 0

    def config(self) -> bytes:
        return self._config

    def process(self, queue_index: int, queue: SplitQueue) -> bool:
        """Serves requests while the rate limiter lets them through; a
        refused one stays in the ring until a timer on the worker looks
        again (the guest only sees it take longer)."""
        while True:
            if self._throttle_timer is not None:
                return False
            chain = queue.pop()
            if chain is None:
                return True
            if self.limiter is not None:
                wait = self.limiter.consume(self._data_bytes(chain))
                if wait:
                    queue.undo_pop()
                    self.throttled += 1
                    self._throttle_timer = self.transport.context.worker.call_later(wait, self._refilled)
                    return False
            queue.push(chain.head, self.handle(queue_index, chain))

    def _refilled(self) -> None:
        self._throttle_timer = None
        self.transport.serve(0)

    @staticmethod
    def _data_bytes(chain: DescriptorChain) -> int:
        """What a request costs the bandwidth bucket: the bytes it reads or writes."""
        if chain.readable_length < HEADER.size or chain.writable_length < 1:
            return 0
        kind = HEADER.unpack(chain.read(0, HEADER.size))[0]
        if kind == T_IN:
            return chain.writable_length - 1
        if kind == T_OUT:
            return chain.readable_length - HEADER.size
        return 0

    def handle(self, queue_index: int, chain: DescriptorChain) -> int:
        if chain.readable_length < HEADER.size or chain.writable_length < 1:
            raise QueueError("virtio-blk request without its 16-byte header or status byte")
        kind, _reserved, sector = HEADER.unpack(chain.read(0, HEADER.size))
        self.requests += 1
        status = self._serve(kind, sector, chain)
        chain.write(bytes([status]), chain.writable_length - 1)
        return chain.writable_length

    def _serve(self, kind: int, sector: int, chain: DescriptorChain) -> int:
        image = self.image
        if kind == T_IN:
            length = chain.writable_length - 1
            if not self._in_range(sector, length):
                return S_IOERR
            image.read_into(chain.writable_views(0, length), sector * SECTOR)
            self.bytes_read += length
            return S_OK
        if kind == T_OUT:
            length = chain.readable_length - HEADER.size
            if image.readonly or not self._in_range(sector, length):
                return S_IOERR
            image.write_from(chain.readable_views(HEADER.size, length), sector * SECTOR)
            self.bytes_written += length
            return S_OK
        if kind == T_FLUSH:
            if not image.readonly:
                image.flush()
            return S_OK
        if kind == T_GET_ID:
            chain.write(self.disk_id[:chain.writable_length - 1])
            return S_OK
        if kind in (T_DISCARD, T_WRITE_ZEROES):
            return self._ranges(kind, chain)
        return S_UNSUPP

    def _in_range(self, sector: int, length: int) -> bool:
        return length % SECTOR == 0 and sector + length // SECTOR <= self.image.sectors

    def _ranges(self, kind: int, chain: DescriptorChain) -> int:
        data = chain.read(HEADER.size, SEGMENT.size * (MAX_SEGMENTS + 1))
        count, rest = divmod(chain.readable_length - HEADER.size, SEGMENT.size)
        if count == 0 or rest or count > MAX_SEGMENTS:
            return S_IOERR
        segments = [SEGMENT.unpack_from(data, SEGMENT.size * i) for i in range(count)]
        for sector, sectors, flags in segments:
            unmap = flags & WRITE_ZEROES_UNMAP
            if flags & ~WRITE_ZEROES_UNMAP or (kind == T_DISCARD and unmap):
                return S_UNSUPP
            if sectors > MAX_SEGMENT_SECTORS or not self._in_range(sector, sectors * SECTOR):
                return S_IOERR
        if self.image.readonly:
            return S_IOERR
        for sector, sectors, flags in segments:
            if kind == T_DISCARD:
                self.image.discard(sector * SECTOR, sectors * SECTOR)
            else:
                self.image.write_zeroes(sector * SECTOR, sectors * SECTOR, bool(flags & WRITE_ZEROES_UNMAP))
        return S_OK

    def counters(self) -> dict:
        return {"requests": self.requests, "bytes_read": self.bytes_read, "bytes_written": self.bytes_written,
                "throttled": self.throttled}

    def save_state(self) -> dict:
        """The disk's size and mode (the driver read them: a restore must find
        the same) and the rate limiter's buckets; nothing is in flight."""
        return {"sectors": self.image.sectors, "readonly": self.image.readonly,
                "limiter": None if self.limiter is None else self.limiter.save_state()}

    def restore_state(self, reader) -> None:
        sectors = reader.integer("sectors", 0, (1 << 64) - 1)
        readonly = reader.boolean("readonly")
        saved = reader.nested("limiter")
        reader.finish()
        if sectors != self.image.sectors or readonly != self.image.readonly:
            raise reader.fail("sectors", f"the driver saw a {'read-only' if readonly else 'read-write'} disk of "
                              f"{sectors} sectors; {self.image.path} is {'read-only' if self.image.readonly else 'read-write'} "
                              f"with {self.image.sectors}")
        if (saved is None) != (self.limiter is None):
            raise reader.fail("limiter", "a rate limiter's state for a disk configured without one, "
                              "or none for a disk with one")
        if self.limiter is not None:
            self.limiter.restore_state(StateReader(saved, f"{reader.device} limiter"))
        if self._throttle_timer is not None:          # the transport serves the queue again
            self._throttle_timer.cancel()
            self._throttle_timer = None

    def close(self) -> None:
        self.image.close()

    def describe(self) -> str:
        mode = "read-only" if self.image.readonly else "read-write"
        return f"{self.image.path} ({mode}, {self.image.sectors} sectors)"
