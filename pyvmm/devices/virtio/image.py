"""The raw disk image behind a virtio-blk device: I/O, flush, discard, lock.

Writes go straight to the file with pwritev (no buffering in pyvmm), so a
write the guest saw completed survives pyvmm being killed; flush is
fdatasync, so it also survives the host losing power. A writable image is
synced once more when it is closed.

Locking follows QEMU's scheme (block/file-posix.c), so pyvmm and QEMU keep
each other off an image: open-file-description (OFD) read locks on single
bytes, byte 100 + n meaning "holds permission n" and byte 200 + n "does not
let others take permission n" (n = 0 consistent read, 1 write). A writable
image holds 100, 101 and 201; a read-only one holds 100 and 201, since its
guest must not see the file change under it. Opening fails when another
open file holds a byte that conflicts (another process, or another VM of
this one): 201 or 101 when we want to write, 101 when we only read.
"""

from __future__ import annotations

import errno
import fcntl
import os
import stat
import struct

SECTOR = 512
PERM_BASE, SHARED_BASE = 100, 200
CONSISTENT_READ, WRITE = 0, 1
_FLOCK = struct.Struct("@hhqqi4x")          # struct flock on Linux x86-64
FALLOC_FL_KEEP_SIZE, FALLOC_FL_PUNCH_HOLE, FALLOC_FL_ZERO_RANGE = 0x01, 0x02, 0x10
ZERO_CHUNK = 1 << 20                        # zero-filling writes go in pieces of this size


class ImageError(ValueError):
    """An image that cannot be used as asked; the message is for the user."""


def _flock(lock_type: int, start: int) -> bytes:
    return _FLOCK.pack(lock_type, os.SEEK_SET, start, 1, 0)


def _conflicts(fd: int, byte: int) -> bool:
    """Whether another open file holds a lock on `byte` (F_OFD_GETLK)."""
    answer = fcntl.fcntl(fd, fcntl.F_OFD_GETLK, _flock(fcntl.F_WRLCK, byte))
    return _FLOCK.unpack(answer)[0] != fcntl.F_UNLCK


_fallocate = None


def _libc_fallocate():
    """fallocate(2) through ctypes (the os module has no punch-hole mode); None without it."""
    global _fallocate
    if _fallocate is None:
        import ctypes   # only images that are discarded or zeroed pay for it
        try:
            function = ctypes.CDLL(None, use_errno=True).fallocate
            function.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
            function.restype = ctypes.c_int
            _fallocate = function
        except (OSError, AttributeError):
            _fallocate = False
    return _fallocate or None


class RawImage:
    """An open raw image. `path`; `readonly`: opened O_RDONLY, never written."""

    def __init__(self, path: str, readonly: bool = False) -> None:
        self.path = path
        self.readonly = readonly
        self.fd = -1
        try:
            self.fd = os.open(path, (os.O_RDONLY if readonly else os.O_RDWR) | os.O_CLOEXEC)
        except IsADirectoryError:
            raise ImageError(f"cannot open disk image {path}: it is a directory") from None
        except OSError as error:
            raise ImageError(f"cannot open disk image {path}: {error.strerror or error}") from None
        try:
            info = os.fstat(self.fd)
            if stat.S_ISBLK(info.st_mode):
                self.size = os.lseek(self.fd, 0, os.SEEK_END)
            elif stat.S_ISREG(info.st_mode):
                self.size = info.st_size
            else:
                raise ImageError(f"disk image {path} is not a regular file or a block device")
            self._lock()
        except BaseException:
            os.close(self.fd)
            self.fd = -1
            raise
        self.sectors = self.size // SECTOR
        self.dirty = False
        self._can_punch = self._can_zero_range = stat.S_ISREG(info.st_mode)

    # --- locking ----------------------------------------------------------------
    def _lock(self) -> None:
        held = [PERM_BASE + CONSISTENT_READ, SHARED_BASE + WRITE]
        if not self.readonly:
            held.append(PERM_BASE + WRITE)
        try:
            for byte in held:
                fcntl.fcntl(self.fd, fcntl.F_OFD_SETLK, _flock(fcntl.F_RDLCK, byte))
            checked = [PERM_BASE + WRITE, SHARED_BASE + CONSISTENT_READ]
            if not self.readonly:
                checked.append(SHARED_BASE + WRITE)
            locked = any(_conflicts(self.fd, byte) for byte in checked)
        except OSError as error:
            if error.errno in (errno.EAGAIN, errno.EACCES):
                locked = True
            else:
                raise ImageError(f"cannot lock disk image {self.path}: {error.strerror or error}") from None
        if locked:
            how = "read" if self.readonly else "write to"
            raise ImageError(f"disk image {self.path} is in use by another VM (pyvmm or QEMU); "
                             f"cannot {how} it")

    # --- I/O (the device's worker thread) -----------------------------------------
    def read_into(self, views, offset: int) -> int:
        """Fills the views from `offset`; past the end of the file reads zero."""
        done = 0
        while views:
            count = os.preadv(self.fd, views, offset + done)
            if count == 0:
                for view in views:
                    view[:] = bytes(len(view))
                return done
            done += count
            views = _advance(views, count)
        return done

    def write_from(self, views, offset: int) -> int:
        done = 0
        self.dirty = True
        while views:
            count = os.pwritev(self.fd, views, offset + done)
            done += count
            views = _advance(views, count)
        return done

    def flush(self) -> None:
        os.fdatasync(self.fd)
        self.dirty = False

    def discard(self, offset: int, length: int) -> None:
        """Drops the range: it reads as zeroes afterwards."""
        self.write_zeroes(offset, length, unmap=True)

    def write_zeroes(self, offset: int, length: int, unmap: bool = False) -> None:
        self.dirty = True
        if unmap and self._can_punch and self._try_fallocate(FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
                                                              offset, length):
            return
        if self._can_zero_range and self._try_fallocate(FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE,
                                                         offset, length):
            return
        zeroes = bytes(min(length, ZERO_CHUNK))
        while length > 0:
            count = os.pwrite(self.fd, zeroes[:min(length, ZERO_CHUNK)], offset)
            offset += count
            length -= count

    def _try_fallocate(self, mode: int, offset: int, length: int) -> bool:
        fallocate = _libc_fallocate()
        if fallocate is None:
            self._can_punch = self._can_zero_range = False
            return False
        if fallocate(self.fd, mode, offset, length) == 0:
            return True
        import ctypes
        error = ctypes.get_errno()
        if error in (errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
            if mode & FALLOC_FL_PUNCH_HOLE:
                self._can_punch = False
            else:
                self._can_zero_range = False
            return False
        raise OSError(error, os.strerror(error))

    def close(self) -> None:
        if self.fd < 0:
            return
        try:
            if self.dirty:
                os.fdatasync(self.fd)
        except OSError:
            pass                  # the data already reached the kernel; nothing more to do
        finally:
            os.close(self.fd)     # drops the OFD locks with it
            self.fd = -1

    def __repr__(self) -> str:
        return f"RawImage({self.path!r}, readonly={self.readonly}, size={self.size})"


def _advance(views, count: int):
    """The views left after `count` bytes were transferred."""
    while views and count >= len(views[0]):
        count -= len(views[0])
        views = views[1:]
    if views and count:
        views = [views[0][count:]] + list(views[1:])
    return views


def check_image(path: str, readonly: bool) -> None:
    """Raises ImageError if the image cannot be opened as asked (missing,
    unreadable, not a file, locked by another VM); opens nothing for good."""
    RawImage(path, readonly).close()
