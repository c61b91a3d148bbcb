"""virtio entropy device: fills writable buffers from its source, bounded per request."""

import os

import pytest

from pyvmm.devices.virtio import spec
from pyvmm.devices.virtio.rng import MAX_REQUEST, EntropySource, VirtioRng
from pyvmm.testing.virtio import VirtioBench


@pytest.fixture
def pattern_file(tmp_path):
    path = tmp_path / "entropy"
    path.write_bytes(bytes(range(256)) * 4)
    return str(path)


def test_fills_writable_buffers_from_the_source(pattern_file):
    with VirtioBench(VirtioRng(EntropySource(pattern_file))) as bench:
        assert bench.driver.read(spec.MMIO_DEVICE_ID) == 4
        assert bench.driver.device_features() >> 32 == 1          # VERSION_1, no device bits
        queue = bench.driver.start()[0]
        head = queue.add([(0x80000, 100, True), (0x90000, 28, True)])
        queue.kick()
        bench.run()
        assert queue.take_used() == [(head, 128)]
        assert bench.memory.read(0x80000, 100) + bench.memory.read(0x90000, 28) == bytes(range(128))


def test_a_file_source_wraps_around(tmp_path):
    path = tmp_path / "short"
    path.write_bytes(b"0123456789")
    source = EntropySource(str(path))
    try:
        assert source.read(8) == b"01234567"
        assert source.read(8) == b"89"
        assert source.read(4) == b"0123"
    finally:
        source.close()


def test_an_empty_file_is_refused(tmp_path):
    path = tmp_path / "empty"
    path.write_bytes(b"")
    with pytest.raises(OSError, match="empty"):
        EntropySource(str(path))


def test_readable_buffers_are_ignored_and_requests_are_bounded():
    with VirtioBench(VirtioRng(EntropySource()), memory_size=4 << 20) as bench:
        queue = bench.driver.start()[0]
        readable = queue.add([(0x80000, 64, False)])
        huge = queue.add([(0x100000, 3 << 20, True)])
        queue.kick()
        bench.run()
        assert queue.take_used() == [(readable, 0), (huge, MAX_REQUEST)]
        assert bench.memory.read(0x100000 + MAX_REQUEST, 64) == bytes(64)


def test_urandom_gives_different_bytes_each_time():
    with VirtioBench(VirtioRng(EntropySource())) as bench:
        queue = bench.driver.start()[0]
        queue.add([(0x80000, 32, True)])
        queue.add([(0x81000, 32, True)])
        queue.kick()
        bench.run()
        first, second = bench.memory.read(0x80000, 32), bench.memory.read(0x81000, 32)
        assert first != second and first != bytes(32)


def test_close_releases_the_source_fd():
    before = len(os.listdir("/proc/self/fd"))
    device = VirtioRng(EntropySource())
    device.close()
    assert len(os.listdir("/proc/self/fd")) == before
