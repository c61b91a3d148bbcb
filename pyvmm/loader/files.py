"""Reading the files a user names (kernel, initrd, modules), bounded before any byte is read.

Each file is opened without blocking (a FIFO must not hang the VMM), checked
with fstat (only regular files, and no larger than the guest RAM left for
it), then read in pieces of CHUNK bytes into one buffer of the size fstat
gave: a 2 GiB file for a 128 MiB guest, /dev/zero or a FIFO are refused
before anything is read.
"""

import io
import os
import stat

from .. import guests
from .common import LoadOptions

CHUNK = 1 << 20
_KINDS = ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"),
          (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))


class InputFileError(ValueError):
    """A kernel, module or initrd file that cannot be read; the message says why."""


def read_kernel(config):
    """The kernel image bytes and the load options from a VmConfig.

    The kernel, the initrd and the modules together may not be larger than
    the guest's RAM: each is checked against what is left before it is read.
    """
    options = LoadOptions(raw_mode=config.raw_mode, load_addr=config.load_addr,
                          entry=config.entry, cmdline=config.cmdline)
    path = config.kernel if config.kernel is not None else guests.path(guests.DEFAULT_GUEST)
    options.kernel_path = path
    budget = _Budget(config.memory)
    image = budget.read(path, "kernel")
    options.modules = [(spec, budget.read(spec.split(" ", 1)[0], "module"))
                       for spec in config.modules]
    options.initrd = None if config.initrd is None else budget.read(config.initrd, "initrd")
    return image, options


class _Budget:
    """Guest RAM not yet taken by the files read so far."""

    def __init__(self, ram_size):
        self.ram_size = ram_size
        self.left = ram_size

    def read(self, path, what):
        data = read_file(path, what, self.left, self.ram_size)
        self.left -= len(data)
        return data


def read_file(path, what, limit=None, ram_size=None):
    """The bytes (a bytearray) of the regular file `path`, at most `limit` bytes.

    InputFileError names the file and the reason: missing, unreadable, a
    directory, not a regular file, or larger than `limit` (the guest RAM
    left, `ram_size` being all of it).
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    except OSError as error:
        raise InputFileError(f"cannot read {what} {path}: {error.strerror or error}") from None
    try:
        size = _checked_size(os.fstat(fd), path, what, limit, ram_size)
        with io.FileIO(fd, "rb", closefd=False) as source:
            return _read_exactly(source, size)
    except OSError as error:
        raise InputFileError(f"cannot read {what} {path}: {error.strerror or error}") from None
    finally:
        os.close(fd)


def _checked_size(info, path, what, limit, ram_size):
    if stat.S_ISDIR(info.st_mode):
        raise InputFileError(f"cannot read {what} {path}: it is a directory")
    if not stat.S_ISREG(info.st_mode):
        kind = next((name for test, name in _KINDS if test(info.st_mode)), "not a regular file")
        raise InputFileError(f"cannot read {what} {path}: it is {kind}, not a regular file")
    if limit is not None and info.st_size > limit:
        ram = limit if ram_size is None else ram_size
        taken = "" if ram == limit else " with the files before it"
        raise InputFileError(f"{what} {path} ({info.st_size} bytes) does not fit in guest "
                             f"memory{taken} (guest RAM is {_size(ram)})")
    return info.st_size


def _read_exactly(source, size):
    """Up to `size` bytes in CHUNK pieces; fewer if the file shrank meanwhile,
    and never more, however it grows."""
    data = bytearray(size)
    view = memoryview(data)
    done = 0
    while done < size:
        count = source.readinto(view[done:done + CHUNK])
        if not count:
            break
        done += count
    view.release()
    if done < size:
        del data[done:]
    return data


def _size(value):
    return f"{value >> 20} MiB" if value >= 1 << 20 else f"{value} bytes"
