"""virtio-blk on a raw image, without KVM: requests, limits, read-only disks, the image lock."""

import os
import struct

import pytest

from pyvmm.devices.virtio import spec
from pyvmm.devices.virtio.blk import (MAX_SEGMENT_SECTORS, MAX_SEGMENTS, S_IOERR, S_OK, S_UNSUPP, T_DISCARD, T_FLUSH,
                                      T_GET_ID, T_IN, T_OUT, T_WRITE_ZEROES, VirtioBlock)
from pyvmm.devices.virtio.image import ImageError, RawImage, check_image
from pyvmm.devices.ratelimit import RateLimiter
from pyvmm.testing.virtio import VirtioBench

SECTORS = 64
HEADER, DATA, STATUS = 0x80000, 0x90000, 0xA0000


@pytest.fixture
def image_path(tmp_path):
    path = tmp_path / "disk.img"
    path.write_bytes(bytes(range(256)) * (SECTORS * 2))
    return path


def start(path, readonly=False, disk_id="disk0"):
    bench = VirtioBench(VirtioBlock(RawImage(str(path), readonly), disk_id))
    queue = bench.driver.start([64])[0]
    return bench, queue


def request(bench, queue, kind, sector=0, data=b"", read_length=0, segments=None):
    """One request; returns (status byte, used length, bytes read)."""
    memory = bench.memory
    memory.write(HEADER, struct.pack("<IIQ", kind, 0, sector))
    buffers = [(HEADER, 16, False)]
    if segments is not None:
        data = b"".join(struct.pack("<QII", *segment) for segment in segments)
    if data:
        memory.write(DATA, data)
        buffers.append((DATA, len(data), False))
    if read_length:
        memory.fill(DATA, read_length, 0xEE)
        buffers.append((DATA, read_length, True))
    memory.write(STATUS, b"\xee")
    buffers.append((STATUS, 1, True))
    head = queue.add(buffers)
    queue.kick()
    bench.run()
    used = queue.take_used()
    assert [h for h, _ in used] == [head]
    return memory.read(STATUS, 1)[0], used[0][1], memory.read(DATA, read_length)


def test_configuration_space(image_path):
    bench, _ = start(image_path)
    with bench:
        config = bench.transport.read(0x100, 8)
        assert struct.unpack("<Q", config)[0] == SECTORS
        assert bench.driver.config(20, 4) == struct.pack("<I", 512)          # blk_size
        assert bench.driver.config(12, 4) == struct.pack("<I", 254)          # seg_max
        assert bench.driver.config(40, 4) == struct.pack("<I", MAX_SEGMENTS)  # max_discard_seg
        assert bench.driver.config(60, 1) == b"\xff"                          # past the end
        features = bench.driver.device_features()
        assert features & (1 << 9 | 1 << 13 | 1 << 14) and not features & 1 << 5


def test_read_write_flush_get_id(image_path):
    bench, queue = start(image_path, disk_id="my-disk")
    with bench:
        status, used, data = request(bench, queue, T_IN, 1, read_length=1024)
        assert (status, used) == (S_OK, 1025)
        assert data == image_path.read_bytes()[512:1536]
        assert request(bench, queue, T_OUT, 3, data=b"\x5a" * 512)[:2] == (S_OK, 1)
        assert request(bench, queue, T_FLUSH)[0] == S_OK
        assert image_path.read_bytes()[3 * 512:4 * 512] == b"\x5a" * 512
        status, used, data = request(bench, queue, T_GET_ID, read_length=20)
        assert (status, data) == (S_OK, b"my-disk".ljust(20, b"\0"))
        assert bench.failures == []


@pytest.mark.parametrize("kind, sector, data, read_length, expected", [
    (T_IN, SECTORS - 1, b"", 1024, S_IOERR),           # past the end
    (T_IN, 0, b"", 100, S_IOERR),                       # not whole sectors
    (T_IN, 1 << 62, b"", 512, S_IOERR),                 # absurd sector
    (T_OUT, SECTORS, b"x" * 512, 0, S_IOERR),
    (T_OUT, 0, b"x" * 100, 0, S_IOERR),
    (99, 0, b"", 512, S_UNSUPP),
    (10, 0, b"", 512, S_UNSUPP),                        # GET_LIFETIME: not offered
])
def test_bad_requests_get_an_error_status_and_change_nothing(image_path, kind, sector, data, read_length,
                                                            expected):
    before = image_path.read_bytes()
    bench, queue = start(image_path)
    with bench:
        assert request(bench, queue, kind, sector, data, read_length)[0] == expected
        assert not bench.driver.status & spec.DEVICE_NEEDS_RESET
    assert image_path.read_bytes() == before


def test_discard_and_write_zeroes(image_path):
    bench, queue = start(image_path)
    with bench:
        assert request(bench, queue, T_DISCARD, segments=[(2, 2, 0)])[0] == S_OK
        assert request(bench, queue, T_WRITE_ZEROES, segments=[(8, 1, 0), (10, 1, 1)])[0] == S_OK
        assert request(bench, queue, T_DISCARD, segments=[(0, 1, 1)])[0] == S_UNSUPP   # unmap on discard
        assert request(bench, queue, T_WRITE_ZEROES, segments=[(0, 1, 4)])[0] == S_UNSUPP
        assert request(bench, queue, T_DISCARD, segments=[(SECTORS, 1, 0)])[0] == S_IOERR
        assert request(bench, queue, T_DISCARD, segments=[(0, 1, 0)] * (MAX_SEGMENTS + 1))[0] == S_IOERR
        assert request(bench, queue, T_DISCARD, data=b"\0" * 10)[0] == S_IOERR        # not 16-byte segments
        assert request(bench, queue, T_WRITE_ZEROES, segments=[(0, MAX_SEGMENT_SECTORS + 1, 0)])[0] == S_IOERR
        bench.device.image.flush()
    data = image_path.read_bytes()
    assert data[2 * 512:4 * 512] == bytes(1024)
    assert data[8 * 512:9 * 512] == bytes(512) and data[10 * 512:11 * 512] == bytes(512)
    assert data[4 * 512:8 * 512] == (bytes(range(256)) * 8)
    assert data[0:512] == bytes(range(256)) * 2


def test_a_read_only_disk_refuses_every_write_and_keeps_its_file(image_path):
    before = image_path.read_bytes()
    mtime = os.stat(image_path).st_mtime_ns
    bench, queue = start(image_path, readonly=True)
    with bench:
        assert bench.driver.device_features() & 1 << 5                           # VIRTIO_BLK_F_RO
        assert request(bench, queue, T_OUT, 0, data=b"x" * 512)[0] == S_IOERR
        assert request(bench, queue, T_DISCARD, segments=[(0, 1, 0)])[0] == S_IOERR
        assert request(bench, queue, T_WRITE_ZEROES, segments=[(0, 1, 0)])[0] == S_IOERR
        assert request(bench, queue, T_FLUSH)[0] == S_OK
        assert request(bench, queue, T_IN, 0, read_length=512)[2] == before[:512]
    assert image_path.read_bytes() == before and os.stat(image_path).st_mtime_ns == mtime


@pytest.mark.parametrize("buffers", [
    [(HEADER, 8, False), (STATUS, 1, True)],              # a short header
    [(HEADER, 16, False)],                                # no status byte
    [(STATUS, 1, True)],                                  # no header at all
])
def test_malformed_requests_need_a_reset(image_path, buffers):
    bench, queue = start(image_path)
    with bench:
        queue.add(buffers)
        queue.kick()
        bench.run()
        assert bench.driver.status & spec.DEVICE_NEEDS_RESET
        assert queue.take_used() == [] and bench.failures == []


def test_header_and_data_may_share_buffers(image_path):
    bench, queue = start(image_path)
    with bench:
        memory = bench.memory
        memory.write(HEADER, struct.pack("<IIQ", T_OUT, 0, 5) + b"\x77" * 512)
        queue.add([(HEADER, 100, False), (HEADER + 100, 428, False), (STATUS, 1, True)])
        queue.kick()
        bench.run()
        assert memory.read(STATUS, 1) == b"\0"
        memory.write(HEADER, struct.pack("<IIQ", T_IN, 0, 5))
        queue.add([(HEADER, 16, False), (DATA, 300, True), (DATA + 300, 213, True)])
        queue.kick()
        bench.run()
        assert memory.read(DATA, 512) == b"\x77" * 512 and memory.read(DATA + 512, 1) == b"\0"


def test_image_lock_keeps_a_second_writer_out(image_path):
    first = RawImage(str(image_path))
    try:
        with pytest.raises(ImageError, match="in use by another VM"):
            RawImage(str(image_path))
        with pytest.raises(ImageError, match="in use"):
            RawImage(str(image_path), readonly=True)
        with pytest.raises(ImageError, match="in use"):
            check_image(str(image_path), False)
    finally:
        first.close()
    RawImage(str(image_path)).close()                     # released on close


def test_readers_share_an_image_but_keep_writers_out(image_path):
    readers = [RawImage(str(image_path), readonly=True) for _ in range(2)]
    try:
        with pytest.raises(ImageError, match="in use"):
            RawImage(str(image_path))
    finally:
        for reader in readers:
            reader.close()


@pytest.mark.parametrize("make, message", [
    (lambda tmp: tmp / "missing.img", "No such file"),
    (lambda tmp: tmp, "it is a directory"),
    (lambda tmp: _fifo(tmp), "not a regular file"),
])
def test_images_that_cannot_be_opened(tmp_path, make, message):
    with pytest.raises(ImageError, match=message):
        RawImage(str(make(tmp_path)))


def _fifo(tmp):
    path = tmp / "fifo"
    os.mkfifo(path)
    return path


def test_close_releases_the_fd(image_path):
    before = len(os.listdir("/proc/self/fd"))
    device = VirtioBlock(RawImage(str(image_path)))
    device.close()
    device.close()
    assert len(os.listdir("/proc/self/fd")) == before


def test_a_rate_limited_disk_holds_requests_in_the_ring_until_its_timer(image_path):
    """Bandwidth of 8 sectors a second in a bucket of 0.5 s: two 2-sector
    reads go at once, the rest wait in the ring for one timer each (never
    an error, never a busy loop), and every one completes in order."""
    clock = [0]
    limiter = RateLimiter.from_rates(bytes_per_second=8 * 512, burst=0.5, clock=lambda: clock[0])
    image = RawImage(image_path)
    with VirtioBench(VirtioBlock(image, "disk0", limiter)) as bench:
        queue = bench.driver.start([16])[0]
        heads = []
        for index in range(5):
            base = 0x40000 + index * 0x2000
            bench.memory.write(base, struct.pack("<IIQ", T_IN, 0, index))
            heads.append(queue.add([(base, 16, False), (base + 0x100, 1024, True), (base + 0x1000, 1, True)]))
        queue.kick()
        bench.run()
        assert [head for head, _ in queue.take_used()] == heads[:2]
        timers = bench.context.worker.timers
        assert len(timers) == 1 and timers[0][0] == pytest.approx(0.25)
        assert bench.device.counters()["throttled"] == 1
        for served in (heads[2:3], heads[3:4], heads[4:5]):
            clock[0] += 250_000_000
            bench.context.worker.fire_timers()
            assert [head for head, _ in queue.take_used()] == served
        assert all(bench.memory.read(0x40000 + i * 0x2000 + 0x1000, 1) == bytes([S_OK]) for i in range(5))
        assert bench.device.counters()["bytes_read"] == 5 * 1024 and not bench.failures
