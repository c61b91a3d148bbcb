"""TAP devices (Linux's /dev/net/tun) for the network device.

Tap.open(name) attaches to an existing TAP interface; Tap.create() makes a
new one for this process, which the kernel removes when its file is
closed (at exit, or when pyvmm is killed). Both use IFF_VNET_HDR with a
12-byte header, so every frame read or written starts with a struct
virtio_net_hdr_mrg_rxbuf, the very header a virtio-net driver uses: the
device passes it through, and the checksum and segmentation offloads the
driver accepts are given to the TAP with TUNSETOFFLOAD.

The file is non-blocking: read_frame returns None when nothing is
waiting, and the device's worker watches the descriptor for more.
TapError carries one line for the user.
"""

from __future__ import annotations

import errno
import fcntl
import os
import socket
import struct
from typing import List, Optional

TUN_PATH = "/dev/net/tun"
IFNAMSIZ = 16
CREATED_NAME = "pyvmmtap%d"           # the kernel picks the number

# linux/if_tun.h
TUNSETIFF = 0x400454CA
TUNSETOFFLOAD = 0x400454D0
TUNGETIFF = 0x800454D2
TUNSETVNETHDRSZ = 0x400454D8
IFF_TAP = 0x0002
IFF_NO_PI = 0x1000
IFF_VNET_HDR = 0x4000
IFF_PERSIST = 0x0800
IFF_MULTI_QUEUE = 0x0100
TUN_F_CSUM = 0x01
TUN_F_TSO4 = 0x02
TUN_F_TSO6 = 0x04
TUN_F_TSO_ECN = 0x08

# linux/sockios.h, linux/if.h
SIOCGIFFLAGS = 0x8913
SIOCSIFFLAGS = 0x8914
IFF_UP = 0x1

VNET_HDR_SIZE = 12
CAP_NET_ADMIN = 12

_IFREQ = struct.Struct("16sH22x")


class TapError(Exception):
    """A TAP device that cannot be used; the message is for the user."""


def has_net_admin() -> bool:
    """Whether this process has CAP_NET_ADMIN in its effective set."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("CapEff:"):
                    return bool(int(line.split()[1], 16) >> CAP_NET_ADMIN & 1)
    except (OSError, ValueError):
        pass
    return os.geteuid() == 0


def interface_exists(name: str) -> bool:
    """Whether a network interface of that name exists in this thread's
    network namespace (asked through a socket, not /sys, which shows the
    namespace it was mounted in)."""
    try:
        socket.if_nametoindex(name)
    except (OSError, ValueError):
        return False
    return True


def check_name(name: str) -> None:
    if not name or len(name.encode()) >= IFNAMSIZ or "/" in name or any(c.isspace() for c in name) \
            or "%" in name or not name.isprintable():
        raise TapError(f"{name!r} is not a network interface name (1 to {IFNAMSIZ - 1} characters, "
                       "no spaces, '/' or '%')")


class Tap:
    """One TAP queue: a non-blocking file descriptor carrying whole frames,
    each behind a 12-byte virtio-net header."""

    def __init__(self, fd: int, name: str, created: bool) -> None:
        self.fd = fd
        self.name = name
        self.created = created          # made for this process: gone when fd closes
        self.offload = 0

    @classmethod
    def open(cls, name: str) -> "Tap":
        """Attaches to the existing TAP interface `name`."""
        check_name(name)
        if not interface_exists(name):
            raise TapError(f"there is no network interface {name} (create a TAP device with "
                           f"`ip tuntap add {name} mode tap user $USER`)")
        tap = cls._attach(name)
        if not tap._flags() & IFF_PERSIST:      # it vanished in between, and TUNSETIFF made a new one
            tap.close()
            raise TapError(f"there is no TAP device {name}")
        return tap

    @classmethod
    def create(cls) -> "Tap":
        """A new TAP interface for this process, brought up; removed when closed."""
        if not has_net_admin():
            raise TapError("creating a TAP device needs CAP_NET_ADMIN (run as root, or create one with "
                           "`ip tuntap add NAME mode tap user $USER` and give tap=NAME)")
        tap = cls._attach(CREATED_NAME, created=True)
        try:
            tap._bring_up()
        except OSError as error:
            tap.close()
            raise TapError(f"cannot bring TAP device {tap.name} up: {error.strerror or error}") from None
        return tap

    @classmethod
    def _attach(cls, name: str, created: bool = False) -> "Tap":
        try:
            fd = os.open(TUN_PATH, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError as error:
            raise TapError(f"cannot open {TUN_PATH}: {error.strerror or error}") from None
        try:
            request = _IFREQ.pack(name.encode(), IFF_TAP | IFF_NO_PI | IFF_VNET_HDR)
            try:
                answer = fcntl.ioctl(fd, TUNSETIFF, request)
            except OSError as error:
                raise TapError(_attach_trouble(name, created, error)) from None
            actual = _IFREQ.unpack(answer)[0].rstrip(b"\0").decode(errors="replace")
            try:
                fcntl.ioctl(fd, TUNSETVNETHDRSZ, struct.pack("i", VNET_HDR_SIZE))
                fcntl.ioctl(fd, TUNSETOFFLOAD, 0)
            except OSError as error:
                raise TapError(f"TAP device {actual} does not take 12-byte virtio-net headers: "
                               f"{error.strerror or error}") from None
        except BaseException:
            os.close(fd)
            raise
        return cls(fd, actual, created)

    def _flags(self) -> int:
        answer = fcntl.ioctl(self.fd, TUNGETIFF, _IFREQ.pack(b"", 0))
        return _IFREQ.unpack(answer)[1]

    def _bring_up(self) -> None:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as control:
            request = _IFREQ.pack(self.name.encode(), 0)
            flags = _IFREQ.unpack(fcntl.ioctl(control, SIOCGIFFLAGS, request))[1]
            fcntl.ioctl(control, SIOCSIFFLAGS, _IFREQ.pack(self.name.encode(), flags | IFF_UP))

    def set_offload(self, flags: int) -> None:
        """TUNSETOFFLOAD: what the receiving side (the guest's driver) takes:
        partial checksums (TUN_F_CSUM) and TSO frames (TUN_F_TSO4/6/_ECN)."""
        if flags != self.offload:
            fcntl.ioctl(self.fd, TUNSETOFFLOAD, flags)
            self.offload = flags

    def read_frame(self, buffer: bytearray) -> Optional[int]:
        """Reads one frame (header included) into `buffer`; its length, or
        None when none is waiting. A frame longer than the buffer comes
        truncated (the device's buffer holds the largest the TAP makes)."""
        try:
            return os.readv(self.fd, [buffer])
        except BlockingIOError:
            return None
        except OSError as error:
            if error.errno in (errno.EINTR, errno.EAGAIN):
                return None
            raise

    def write_frame(self, parts: List) -> int:
        """Writes one frame (header first) from a list of buffers; its length.
        OSError when the TAP refuses it (BlockingIOError: try again later)."""
        return os.writev(self.fd, parts)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __repr__(self) -> str:
        return f"Tap({self.name!r}, fd={self.fd}, created={self.created})"


def _attach_trouble(name: str, created: bool, error: OSError) -> str:
    what = "create a TAP device" if created else f"attach to TAP device {name}"
    if error.errno == errno.EBUSY:
        return f"cannot {what}: it is in use by another process"
    if error.errno == errno.EPERM:
        return (f"cannot {what}: permission denied (it belongs to another user; attaching needs "
                "its owner or CAP_NET_ADMIN)")
    if error.errno == errno.EINVAL and not created:
        return f"cannot {what}: {name} is not a TAP device (a TUN device, or another kind of interface)"
    return f"cannot {what}: {error.strerror or error}"
