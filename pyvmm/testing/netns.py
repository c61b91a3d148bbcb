"""Private network namespaces with a TAP device, for network tests and
benchmarks: every packet stays inside the namespace.

    with NetNamespace() as ns:                 # `ip netns add pyvmm-<pid>-<n>`
        tap = ns.add_tap("tap0", "10.0.2.1/24")
        with ns.entered():                     # this thread joins the namespace
            machine = Machine(config)          # ...and opens the TAP there
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        # sockets and TAPs keep their namespace once made
        ns.exec(["qemu-system-x86_64", ...])   # a command run inside it

Needs root (or CAP_SYS_ADMIN and CAP_NET_ADMIN), `ip` (iproute2) and
/dev/net/tun; missing() says which is missing. The namespace, and the
TAP devices in it, are deleted on close.
"""

from __future__ import annotations

import contextlib
import ctypes
import itertools
import os
import select
import shutil
import socket
import struct
import subprocess
import threading
import time
from typing import Callable, List, Optional, Sequence, Tuple

CLONE_NEWNET = 0x40000000
_COUNTER = itertools.count()
_libc = ctypes.CDLL(None, use_errno=True)


def missing() -> Optional[str]:
    """Why network namespaces with TAP devices cannot be made here, or None."""
    if shutil.which("ip") is None:
        return "ip (iproute2) is not installed"
    if not os.path.exists("/dev/net/tun"):
        return "/dev/net/tun does not exist"
    if os.geteuid() != 0:
        return "network namespaces and TAP devices need root"
    return None


def _setns(fd: int) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        error = ctypes.get_errno()
        raise OSError(error, f"setns: {os.strerror(error)}")


class NetNamespace:
    """A named network namespace (loopback up), deleted on close()."""

    def __init__(self, name: Optional[str] = None) -> None:
        self.name = name or f"pyvmm-{os.getpid()}-{next(_COUNTER)}"
        self._ip("netns", "add", self.name)
        try:
            self.run(["ip", "link", "set", "lo", "up"])
        except BaseException:
            self.close()
            raise

    @staticmethod
    def _ip(*args: str) -> None:
        subprocess.run(["ip", *args], check=True, capture_output=True, text=True)

    def exec_command(self, command: Sequence[str]) -> List[str]:
        """`command` as run inside the namespace (ip netns exec)."""
        return ["ip", "netns", "exec", self.name, *command]

    def run(self, command: Sequence[str], check: bool = True) -> subprocess.CompletedProcess:
        return subprocess.run(self.exec_command(command), check=check, capture_output=True, text=True)

    def add_tap(self, name: str, address: Optional[str] = None, up: bool = True, ipv6: bool = False,
                mtu: Optional[int] = None) -> str:
        """A persistent TAP device `name` in the namespace, with `address`
        (CIDR) if given; IPv6 off unless asked, so the host's own router
        and neighbour discovery stay off the wire."""
        self.run(["ip", "tuntap", "add", name, "mode", "tap"])
        if not ipv6:
            self.run(["sysctl", "-q", "-w", f"net.ipv6.conf.{name}.disable_ipv6=1"])
        if mtu is not None:
            self.run(["ip", "link", "set", name, "mtu", str(mtu)])
        if address is not None:
            self.run(["ip", "addr", "add", address, "dev", name])
        if up:
            self.run(["ip", "link", "set", name, "up"])
        return name

    def neighbour(self, device: str, address: str, mac: str) -> None:
        """A permanent ARP entry: the host then sends without asking first."""
        self.run(["ip", "neigh", "replace", address, "lladdr", mac, "dev", device, "nud", "permanent"])

    def link_stats(self, device: str) -> dict:
        """The interface's counters (rx_packets, tx_packets, rx_bytes...) from the host's side."""
        stats = {}
        for name in ("rx_packets", "tx_packets", "rx_bytes", "tx_bytes", "rx_dropped", "tx_dropped"):
            stats[name] = int(self.run(["cat", f"/sys/class/net/{device}/statistics/{name}"]).stdout)
        return stats

    @contextlib.contextmanager
    def entered(self):
        """The calling thread inside the namespace for the block (sockets and
        TAP devices opened there stay in it), then back where it was."""
        home = os.open(f"/proc/self/task/{threading.get_native_id()}/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        try:
            target = os.open(f"/run/netns/{self.name}", os.O_RDONLY | os.O_CLOEXEC)
            try:
                _setns(target)
            finally:
                os.close(target)
            try:
                yield self
            finally:
                _setns(home)
        finally:
            os.close(home)

    def close(self) -> None:
        if self.name is not None:
            subprocess.run(["ip", "netns", "del", self.name], capture_output=True)
            self.name = None

    def __enter__(self) -> "NetNamespace":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# --- traffic from the host's side (sockets made inside a namespace) ----------------------

def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def icmp_echo_packet(ident: int, seq: int, payload: bytes) -> bytes:
    """An ICMP echo request (type 8) with its checksum."""
    header = struct.pack("!BBHHH", 8, 0, 0, ident, seq)
    return struct.pack("!BBHHH", 8, 0, _checksum(header + payload), ident, seq) + payload


class Pinger:
    """ICMP echo over a raw socket made in the namespace (root): ping(seq,
    payload) sends one request and returns the reply's payload, or None
    when none came in time."""

    def __init__(self, ns: NetNamespace, address: str, ident: int = 0x5159) -> None:
        with ns.entered():
            self.sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
        self.address, self.ident = address, ident

    def ping(self, seq: int, payload: bytes, timeout: float = 5.0) -> Optional[bytes]:
        self.sock.sendto(icmp_echo_packet(self.ident, seq, payload), (self.address, 0))
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self.sock], [], [], left)[0]:
                return None
            packet, (source, _) = self.sock.recvfrom(65536)
            ihl = (packet[0] & 15) * 4
            kind, _code, _sum, ident, got_seq = struct.unpack_from("!BBHHH", packet, ihl)
            if source == self.address and kind == 0 and ident == self.ident and got_seq == seq:
                if _checksum(packet[ihl:]) != 0:
                    raise AssertionError(f"ICMP echo reply {seq} has a bad checksum")
                return packet[ihl + 8:]

    def close(self) -> None:
        self.sock.close()


class UdpClient:
    """A UDP socket made in the namespace, bound to `port` (so the guest
    sees the same source port on every run)."""

    def __init__(self, ns: NetNamespace, port: int = 0) -> None:
        with ns.entered():
            self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("0.0.0.0", port))

    def request(self, address: Tuple[str, int], payload: bytes, timeout: float = 5.0) -> Optional[bytes]:
        """Sends `payload` and returns the first datagram back from `address` (None: none in time)."""
        self.sock.sendto(payload, address)
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self.sock], [], [], left)[0]:
                return None
            data, source = self.sock.recvfrom(65536)
            if source == address:
                return data

    def close(self) -> None:
        self.sock.close()


class GuestProcess:
    """A VMM (pyvmm or QEMU) running the network guest inside a namespace,
    its standard output collected by a thread."""

    def __init__(self, ns: NetNamespace, command: Sequence[str]) -> None:
        self.process = subprocess.Popen(ns.exec_command(command), stdout=subprocess.PIPE,
                                        stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
        self.output = bytearray()
        self.errors = b""
        self._changed = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        while True:
            data = self.process.stdout.read1(65536)
            with self._changed:
                if not data:
                    self._changed.notify_all()
                    return
                self.output += data
                self._changed.notify_all()

    def wait_for(self, text: bytes, timeout: float = 60.0) -> bool:
        """True once `text` appeared in the output; False if the VMM ended or time ran out first."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while text not in self.output:
                left = deadline - time.monotonic()
                if left <= 0 or (self.process.poll() is not None and not self._reader.is_alive()):
                    return False
                self._changed.wait(min(left, 0.2))
            return True

    def finish(self, timeout: float = 60.0) -> int:
        """Waits for the end (killing it after `timeout`); its status."""
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self._reader.join(5)
        self.errors = self.process.stderr.read()
        self.process.stderr.close()
        self.process.stdout.close()
        return self.process.returncode


GUEST_ADDRESS = "10.0.2.15"           # the network guest's default ip=
HOST_ADDRESS = "10.0.2.1"
MAC = "52:54:00:12:34:56"


def microvm_net_command(kernel: str, tap: str, mac: str = MAC, cmdline: Optional[str] = None,
                        accel: str = "tcg") -> List[str]:
    """QEMU's microvm with one virtio-net device on TAP `tap` (modern
    virtio-mmio, the debug-exit port), the way the network guest needs it."""
    command = ["qemu-system-x86_64", "-M", "microvm,x-option-roms=off,rtc=on,isa-serial=on", "-accel", accel,
               "-nodefaults", "-display", "none", "-serial", "stdio", "-monitor", "none", "-no-reboot",
               "-m", "128", "-device", "isa-debug-exit,iobase=0xf4,iosize=0x04",
               "-global", "virtio-mmio.force-legacy=false", "-kernel", kernel,
               "-netdev", f"tap,id=n0,ifname={tap},script=no,downscript=no,vhost=off",
               "-device", f"virtio-net-device,netdev=n0,mac={mac}"]
    if cmdline is not None:
        command += ["-append", cmdline]
    return command


class Exchange:
    """What one run of the network guest answered (see exchange())."""

    def __init__(self) -> None:
        self.ready = False
        self.pings: List[Optional[bytes]] = []
        self.echoes: List[Optional[bytes]] = []
        self.bye: Optional[bytes] = None
        self.observed: object = None
        self.status: Optional[int] = None
        self.output = b""
        self.errors = b""

    def __repr__(self) -> str:
        return (f"Exchange(ready={self.ready}, status={self.status}, output={self.output[-3000:]!r}, "
                f"errors={self.errors[-3000:]!r})")


def exchange(ns: NetNamespace, command: Sequence[str], pings: Sequence[bytes] = (),
             echoes: Sequence[bytes] = (), udp_port: int = 40000, timeout: float = 60.0,
             before_quit: Optional[Callable[[], object]] = None) -> Exchange:
    """Runs the network guest with `command` inside `ns`; once it is ready,
    pings it with each payload in turn, sends each UDP datagram to its echo
    port, calls before_quit() (its answer in .observed), then sends "quit"
    to port 9, and waits for it to end."""
    result = Exchange()
    pinger = client = None
    guest = GuestProcess(ns, command)
    try:
        result.ready = guest.wait_for(b"net ready", timeout)
        if result.ready:
            pinger, client = Pinger(ns, GUEST_ADDRESS), UdpClient(ns, udp_port)
            result.pings = [pinger.ping(seq, payload) for seq, payload in enumerate(pings, 1)]
            result.echoes = [client.request((GUEST_ADDRESS, 7), payload) for payload in echoes]
            if before_quit is not None:
                result.observed = before_quit()
            result.bye = client.request((GUEST_ADDRESS, 9), b"quit")
    finally:
        for sock in (pinger, client):
            if sock is not None:
                sock.close()
        result.status = guest.finish(timeout if result.ready else 5)
        result.output, result.errors = bytes(guest.output), guest.errors
    return result
