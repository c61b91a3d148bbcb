"""A writer for the "newc" cpio format, the one the Linux kernel unpacks as
an initramfs (Documentation/driver-api/early-userspace/buffer-format.rst).

Each entry is a 110-byte ASCII header ("070701" and 13 eight-digit hex
fields), the NUL-terminated name padded to 4 bytes, then the data padded to
4 bytes. A symlink's data is its target. "TRAILER!!!" ends the archive.
Owners are root and times are 0, so the same input gives the same bytes.
"""

import io
import stat

MAGIC = b"070701"
TRAILER = "TRAILER!!!"


class CpioWriter:
    """Collects entries in order; finish() returns the archive bytes.

    Names are relative to the archive root ("bin/sh", not "/bin/sh"), and a
    directory must be added before anything inside it, as the kernel creates
    entries in archive order.
    """

    def __init__(self):
        self._out = io.BytesIO()
        self._names = set()
        self._next_inode = 1

    def directory(self, name, mode=0o755):
        self._add(name, stat.S_IFDIR | mode, nlink=2)

    def file(self, name, data, mode=0o644):
        self._add(name, stat.S_IFREG | mode, data=bytes(data))

    def symlink(self, name, target):
        self._add(name, stat.S_IFLNK | 0o777, data=target.encode())

    def char_device(self, name, major, minor, mode=0o600):
        self._add(name, stat.S_IFCHR | mode, rdev=(major, minor))

    def finish(self):
        self._write_entry(TRAILER, mode=0, data=b"", nlink=1, inode=0, rdev=(0, 0))
        return self._out.getvalue()

    def _add(self, name, mode, data=b"", nlink=1, rdev=(0, 0)):
        self._check_name(name)
        self._names.add(name)
        inode = self._next_inode
        self._next_inode += 1
        self._write_entry(name, mode, data, nlink, inode, rdev)

    def _check_name(self, name):
        # Programming errors, not user errors: the caller builds the tree.
        parts = name.split("/")
        if not name or name.startswith("/") or "" in parts or "." in parts or ".." in parts:
            raise ValueError(f"cpio entry name must be a plain relative path: {name!r}")
        if name == TRAILER or name in self._names:
            raise ValueError(f"cpio entry {name!r} is already in the archive")
        parent = name.rpartition("/")[0]
        if parent and parent not in self._names:
            raise ValueError(f"cpio entry {name!r} comes before its directory {parent!r}")

    def _write_entry(self, name, mode, data, nlink, inode, rdev):
        encoded_name = name.encode() + b"\0"
        fields = (inode, mode, 0, 0, nlink, 0, len(data), 0, 0,
                  rdev[0], rdev[1], len(encoded_name), 0)
        header = MAGIC + b"".join(b"%08X" % field for field in fields)
        self._out.write(header + encoded_name)
        self._out.write(_padding(len(header) + len(encoded_name)))
        self._out.write(data)
        self._out.write(_padding(len(data)))


def _padding(length):
    return b"\0" * (-length % 4)
