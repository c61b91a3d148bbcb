"""Virtio on a real VM (needs /dev/kvm): block programs and replayed rings.

run_block_program(ops, image, readonly=False, ...) -> BlockRun
    boots virtio-blkops.bin (guests/virtio/blkops.c) with a virtio-blk disk
    on `image`, after writing `ops` (BlockOp) into its memory; the guest
    sends each request (a group of reads at once when they share a group
    number) and records status, used length and a hash of what it read.
    BlockModel is the reference: a bytearray of the image that predicts
    each result (BlockModel.apply) and the file afterwards (.data).

replay_rings_on_kvm(chains, device, ...) -> RingRun
    boots virtio-ringreplay.bin with `device` ("rng" or "blk"), writes the
    hostile chains (pyvmm.testing.virtio.HostileChain) into a queue laid
    out in its memory, lets the guest set the queue up and ring, and
    returns what the device did: the used entries, the status, the
    interrupt bits. The same chains through VirtioBench must give the same.

pattern_image(path) / expected_after_blk_guest(image): virtio-blk.bin's test
    image (byte (sector * 7 + offset) & 0xff everywhere) and what it holds once
    the guest ran on a writable disk.

Both runs go through real MMIO exits, the fast path's doorbells (or the Python
loop with exit_path="python"), the device's worker thread and the
interrupt line into the guest's IOAPIC.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import List, Optional, Sequence

from pyvmm.devices.virtio import blk, spec

PROGRAM, RESULTS = 0x1000000, 0x1800000
PROGRAM_MAGIC, RESULTS_MAGIC = 0x53504F42, 0x53455242        # "BOPS", "BRES"
RING_PARAMS_MAGIC, RING_RESULTS_MAGIC = 0x4C505252, 0x53455252   # "RRPL", "RRES"
ANNOUNCE = 0x100
WAIT_AT_END = 1
OP = struct.Struct("<IIQQII")
RESULT = struct.Struct("<IIQ")
MAX_SECTORS = 256
MEMORY = 64 << 20
STATUS_DONE = 1                       # debug-exit 0
BLOCK_GUEST, RING_GUEST = "virtio-blkops.bin", "virtio-ringreplay.bin"


@dataclass
class BlockOp:
    """One request of a block program: type (blk.T_IN, T_OUT, T_FLUSH,
    T_GET_ID, T_DISCARD, T_WRITE_ZEROES, or ANNOUNCE), sectors, first
    sector, seed (the data of a write; the unmap flag of write zeroes in
    bit 0; the number an ANNOUNCE prints), group (non-zero: sent together
    with its neighbours of the same group)."""

    type: int
    sectors: int = 0
    sector: int = 0
    seed: int = 0
    group: int = 0

    def pack(self) -> bytes:
        return OP.pack(self.type, self.sectors, self.sector, self.seed, self.group, 0)


def xorshift_words(seed: int, count: int) -> bytes:
    """The guest's random_next() words after random_seed(seed), little-endian."""
    state = seed or 0x9E3779B97F4A7C15
    mask = (1 << 64) - 1
    words = []
    for _ in range(count):
        state ^= state >> 12
        state ^= (state << 25) & mask
        state ^= state >> 27
        words.append((state * 0x2545F4914F6CDD1D) & mask)
    return struct.pack(f"<{count}Q", *words)


def word_hash(data: bytes) -> int:
    """FNV-1a over 64-bit little-endian words, as the guest computes it."""
    value = 0xCBF29CE484222325
    for (word,) in struct.iter_unpack("<Q", data):
        value = ((value ^ word) * 0x100000001B3) & ((1 << 64) - 1)
    return value


class BlockModel:
    """What a virtio-blk disk on a raw image must do, request by request."""

    def __init__(self, data: bytes, readonly: bool = False, disk_id: str = "disk0") -> None:
        self.data = bytearray(data)
        self.readonly = readonly
        self.sectors = len(data) // blk.SECTOR
        self.disk_id = disk_id.encode()[:blk.ID_BYTES].ljust(blk.ID_BYTES, b"\0")

    def _in_range(self, op: BlockOp) -> bool:
        return op.sector + op.sectors <= self.sectors

    def apply(self, op: BlockOp):
        """(status, used length, hash or None when the data is not defined)."""
        start, length = op.sector * blk.SECTOR, op.sectors * blk.SECTOR
        if op.type == ANNOUNCE:
            return 0, 0, 0
        if op.type == blk.T_IN:
            if not self._in_range(op):
                return blk.S_IOERR, length + 1, None
            return blk.S_OK, length + 1, word_hash(bytes(self.data[start:start + length]))
        if op.type == blk.T_OUT:
            if self.readonly or not self._in_range(op):
                return blk.S_IOERR, 1, 0
            self.data[start:start + length] = xorshift_words(op.seed, length // 8)
            return blk.S_OK, 1, 0
        if op.type == blk.T_FLUSH:
            return blk.S_OK, 1, 0
        if op.type == blk.T_GET_ID:
            return blk.S_OK, 21, word_hash(self.disk_id + bytes(4))
        if op.type in (blk.T_DISCARD, blk.T_WRITE_ZEROES):
            unmap = op.seed & 1
            if op.type == blk.T_DISCARD and unmap:
                return blk.S_UNSUPP, 1, 0
            if op.sectors > blk.MAX_SEGMENT_SECTORS or not self._in_range(op) or self.readonly:
                return blk.S_IOERR, 1, 0
            self.data[start:start + length] = bytes(length)
            return blk.S_OK, 1, 0
        return blk.S_UNSUPP, 1, 0


def block_programs(capacity: int, max_ops: int = 24, max_sectors: int = 64):
    """A hypothesis strategy of block programs for a disk of `capacity`
    sectors: reads, writes (some past the end), flushes, get-id, discards
    and write-zeroes (with and without unmap), unknown types, and runs of
    reads sent together."""
    from hypothesis import strategies as st

    sector = st.one_of(st.integers(0, max(0, capacity - 1)), st.integers(max(0, capacity - 4), capacity + 4))
    sectors = st.one_of(st.integers(1, min(8, max_sectors)), st.integers(1, max_sectors))
    single = st.one_of(
        st.builds(BlockOp, st.just(blk.T_IN), sectors, sector),
        st.builds(BlockOp, st.just(blk.T_OUT), sectors, sector, st.integers(0, 1 << 32)),
        st.builds(BlockOp, st.sampled_from([blk.T_DISCARD, blk.T_WRITE_ZEROES]), sectors, sector,
                  st.integers(0, 1)),
        st.builds(BlockOp, st.sampled_from([blk.T_FLUSH, blk.T_GET_ID, 99])),
    )

    @st.composite
    def read_group(draw):
        group = draw(st.integers(1, 1000))
        return [BlockOp(blk.T_IN, draw(sectors), draw(sector), group=group)
                for _ in range(draw(st.integers(2, 16)))]

    steps = st.lists(st.one_of(single.map(lambda op: [op]), read_group()), min_size=1, max_size=max_ops)
    return steps.map(lambda nested: [op for ops in nested for op in ops])


@dataclass
class BlockRun:
    results: List[tuple]            # (status, used, hash) per operation
    run: object                     # the RunResult
    output: bytes


def run_block_program(ops: Sequence[BlockOp], image: str, readonly: bool = False, disk_id: str = "disk0",
                      exit_path: str = "fast", timeout: float = 60, wait_at_end: bool = False,
                      serial: str = "buffer") -> BlockRun:
    """Runs the program on a VM with a virtio-blk disk on `image`. With
    wait_at_end the guest prints "program done" and idles until the run
    ends (timeout, or the VMM killed); `serial` is VmConfig's."""
    from pyvmm import guests
    from pyvmm.config import VmConfig
    from pyvmm.virtio_options import DiskSpec
    from pyvmm.machine import Machine

    for op in ops:
        if op.sectors > MAX_SECTORS:
            raise ValueError(f"{op}: at most {MAX_SECTORS} sectors")
    config = VmConfig(kernel=guests.path(BLOCK_GUEST), memory=MEMORY, serial=serial, timeout=timeout,
                      exit_path=exit_path, disks=[DiskSpec(image, readonly, disk_id)])
    program = struct.pack("<IIII", PROGRAM_MAGIC, len(ops), WAIT_AT_END if wait_at_end else 0, 0)
    program += b"".join(op.pack() for op in ops)
    with Machine(config) as machine:
        machine.memory.write(PROGRAM, program)
        result = machine.run()
        magic, done = struct.unpack("<II", machine.memory.read(RESULTS, 8))
        raw = machine.memory.read(RESULTS + 16, RESULT.size * len(ops))
        output = machine.serial_output if serial == "buffer" else b""
    if magic != RESULTS_MAGIC or done != len(ops) or result.status != STATUS_DONE:
        raise AssertionError(f"the block program did not finish: {result!r}, {done} of {len(ops)} done, "
                             f"output {output[-300:]!r}")
    return BlockRun([RESULT.unpack_from(raw, RESULT.size * i) for i in range(len(ops))], result, output)


@dataclass
class RingRun:
    used: List[tuple]               # (head, length) in ring order
    status: int
    interrupt_bits: int
    features_accepted: bool
    run: object


RING_DEVICES = {"rng": spec.ID_ENTROPY, "blk": spec.ID_BLOCK}


def replay_rings_on_kvm(chains, device: str, queue_size: int, base: int, features: int,
                        image: Optional[str] = None, entropy: Optional[str] = None,
                        exit_path: str = "fast", timeout: float = 30) -> RingRun:
    """Writes `chains` (HostileChain) into a queue of `queue_size` entries laid
    out from `base` in guest memory, and has the guest run it on `device`
    ("rng" reading `entropy` (default /dev/urandom), or "blk" on `image`)
    with `features`."""
    from pyvmm import guests
    from pyvmm.config import VmConfig
    from pyvmm.virtio_options import DiskSpec, RngSpec
    from pyvmm.testing.virtio import DriverQueue
    from pyvmm.machine import Machine

    if device == "rng":
        options = dict(rng=RngSpec(entropy) if entropy else RngSpec())
    else:
        options = dict(disks=[DiskSpec(image)])
    config = VmConfig(kernel=guests.path(RING_GUEST), memory=MEMORY, serial="buffer", timeout=timeout,
                      exit_path=exit_path, **options)
    with Machine(config) as machine:
        queue = DriverQueue(None, 0, queue_size, base, memory=machine.memory)
        for chain in chains:
            chain.install(queue)
        machine.memory.write(PROGRAM, struct.pack("<IIIIQQQQ", RING_PARAMS_MAGIC, RING_DEVICES[device], 0,
                                                  queue_size, features, queue.desc, queue.avail, queue.used))
        result = machine.run()
        magic, status, bits, _irqs, used_idx, accepted = struct.unpack("<6I", machine.memory.read(RESULTS, 24))
        used = []
        for position in range(used_idx & 0xFFFF):
            slot = queue.used + 4 + 8 * (position % queue_size)
            used.append(struct.unpack("<II", machine.memory.read(slot, 8)))
        output = machine.serial_output
    if magic != RING_RESULTS_MAGIC or result.status != STATUS_DONE:
        raise AssertionError(f"the ring replay did not finish: {result!r}, output {output[-300:]!r}")
    return RingRun(used, status, bits, bool(accepted), result)


__all__ = ["ANNOUNCE", "BlockModel", "BlockOp", "BlockRun", "RingRun", "block_programs",
           "replay_rings_on_kvm", "run_block_program", "word_hash", "xorshift_words"]


# virtio-blk.bin's test image: byte (sector * 7 + offset) & 0xff everywhere.
PATTERN_SECTORS = 2048


def pattern_image(path):
    """Writes virtio-blk.bin's test image to `path` (a pathlib.Path); returns it."""
    sector = bytes(range(256)) * 4
    path.write_bytes(b"".join(sector[(s * 7) % 256:(s * 7) % 256 + 512] for s in range(PATTERN_SECTORS)))
    return path


def expected_after_blk_guest(image):
    """The image once virtio-blk.bin ran on a writable disk."""
    data = bytearray(image)
    data[10 * 512:12 * 512] = bytes((0xA5 ^ i) & 0xFF for i in range(1024))
    for first in (20, 30, 40):
        data[first * 512:(first + 2) * 512] = bytes(1024)
    return bytes(data)
