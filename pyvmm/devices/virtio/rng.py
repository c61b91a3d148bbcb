"""virtio entropy device (virtio 1.2, 5.4): random bytes from a host source.

One queue (requestq); the driver posts writable buffers and the device
fills them from the source, `/dev/urandom` by default. Readable buffers in
a request are ignored (the driver must not post them; QEMU ignores them
too). A request takes at most MAX_REQUEST bytes: the device may fill less
than a buffer, and a guest asking for gigabytes must not make the worker
read gigabytes.
"""

from __future__ import annotations

import os

from . import spec
from .device import VirtioDevice
from .queue import DescriptorChain

DEFAULT_SOURCE = "/dev/urandom"
MAX_REQUEST = 64 << 10


class EntropySource:
    """An open entropy file (a character device or a regular file, read on
    and wrapped around). Opened when configured, so a bad path is a usage
    error before the VM is built."""

    def __init__(self, path: str = DEFAULT_SOURCE) -> None:
        self.path = path
        self.fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            self._wraps = os.path.isfile(path)
            if self._wraps and os.fstat(self.fd).st_size == 0:
                raise OSError(0, "the file is empty")
        except BaseException:
            os.close(self.fd)
            raise

    def read(self, length: int) -> bytes:
        data = os.read(self.fd, length)
        if not data and self._wraps:
            os.lseek(self.fd, 0, os.SEEK_SET)
            data = os.read(self.fd, length)
        return data

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


class VirtioRng(VirtioDevice):
    device_id = spec.ID_ENTROPY
    queue_count = 1
    name = "virtio-rng"

    def __init__(self, source: EntropySource) -> None:
        super().__init__()
        self.source = source
        self.bytes_given = 0

    def handle(self, queue_index: int, chain: DescriptorChain) -> int:
        wanted = min(chain.writable_length, MAX_REQUEST)
        if not wanted:
            return 0
        data = self.source.read(wanted)
        written = chain.write(data)
        self.bytes_given += written
        return written

    def close(self) -> None:
        self.source.close()

    def counters(self) -> dict:
        return {"bytes": self.bytes_given}

    def describe(self) -> str:
        return f"entropy from {self.source.path}"
