"""Address-space bus that routes guest I/O accesses to device models.

One `Bus` class serves both guest address spaces: the 64 KiB port-I/O space
(`Bus.port_io()`) and the 64-bit MMIO space (`Bus.mmio()`).

Device contract
---------------
A device is any plain Python object with two methods:

    read(offset: int, size: int) -> bytes   # must return exactly `size` bytes
    write(offset: int, data: bytes) -> None

`offset` is relative to the base of the range the device was registered on.
The bus guarantees ``0 <= offset`` and ``offset + size <= length`` of that
range, so a device never sees an access that leaves its range.  Port I/O
sizes are 1, 2 or 4: string port I/O (``rep insb`` ...) is split by the run
loop into single accesses of the element size before it reaches the bus.
MMIO sizes are 1 to 8, and not only powers of two: KVM splits an access that
crosses a page boundary, so an 8-byte read at 0xffd of a page arrives as a
3-byte and a 5-byte access.  Multi-byte values are little-endian, as on x86.

Delivery declarations (optional): how a device's registers may reach it
when the fast path runs (pyvmm.run.fast). The bus reads them at
registration and refuses bad ones (BusError); the Python loop ignores them.

    posted_writes = ((offset, length), ...)
        a write inside [offset, offset + length) only changes the device's
        own state or output stream: no interrupt, no answer, and nothing a
        cached read returns. It may be queued and delivered later, in order,
        before the device's next access (and before any other device's).
    cached_reads = ((offset, size), ...)
        a read of exactly `size` bytes at `offset` may be answered with the
        value the device last published (see RegisterState), without calling
        the device, while it has published one.
    doorbells = ((offset, size, value), ...)
        a write of exactly `value` (`size` bytes) at `offset` only asks the
        device to look at its own state (a virtio queue notification). It may
        be counted by a KVM ioeventfd instead of exiting and delivered as
        write(offset, value) from the device's worker thread, always before
        its next access. Not together with posted_writes: the order of the
        two kinds of writes could not be kept.

A device that changes what may be posted or cached while it runs (the 16550's
transmit register is plain output only while its THR interrupt is off) does
so through the RegisterState of its range, which its DeviceContext carries
as `registers`.

Accesses that hit no device, or that straddle the boundary of a registered
range, are "unhandled": a read returns all-ones (what an ISA bus with nothing
driving it returns), a write is dropped, and both are counted.  The guest can
never make the bus raise; only a buggy device can (`DeviceError`).
"""

from __future__ import annotations

import bisect
from typing import Any, Callable

from .delivery import DeclarationError, Delivery

PORT_IO_LIMIT = 0x10000
MMIO_LIMIT = 1 << 64

# Probing guests can touch many distinct unhandled addresses (think of a
# driver scanning MMIO); stop tracking new addresses past this many so the
# per-address statistics cannot grow without bound.  Totals keep counting.
MAX_TRACKED_UNHANDLED_ADDRESSES = 4096

# The 256 one-byte payloads, shared and immutable: a one-byte access (the
# commonest) allocates nothing on its way to or from a device.
ONE_BYTE = tuple(bytes((value,)) for value in range(256))


class BusError(Exception):
    """A device range could not be registered or unregistered."""


class DeviceError(Exception):
    """A device broke the device contract (e.g. returned the wrong size)."""


class DeviceFailure(Exception):
    """A device raised during an access: names the device, the access and the error."""

    def __init__(self, bus: "Bus", entry: "_Range", access: str, addr: int, size: int,
                 error: BaseException) -> None:
        where = "port" if bus.limit == PORT_IO_LIMIT else "MMIO address"
        super().__init__(f"device {entry.name!r} failed on a {size}-byte {access} at {where} "
                         f"{addr:#x}: {type(error).__name__}: {error}")


class _Range:
    """One registered range; compared by identity."""

    __slots__ = ("base", "end", "name", "device", "read", "write", "delivery", "bells")

    def __init__(self, base: int, end: int, name: str, device: Any, delivery: Delivery) -> None:
        self.base = base
        self.end = end  # exclusive
        self.name = name
        self.device = device
        self.delivery = delivery
        self.bells: tuple = ()  # the doorbells a fast path armed for this range
        # Bound methods cached at registration: saves an attribute lookup
        # per access on the hot VM-exit path.
        self.read: Callable[[int, int], bytes] = device.read
        self.write: Callable[[int, bytes], None] = device.write

    def describe(self) -> str:
        return f"{self.name!r} at [{self.base:#x}, {self.end:#x})"


class Bus:
    """A sorted set of non-overlapping device ranges inside [0, limit)."""

    def __init__(self, name: str, limit: int) -> None:
        if limit <= 0:
            raise BusError(f"bus {name!r}: limit must be positive, got {limit}")
        self.name = name
        self.limit = limit
        self._ranges: list[_Range] = []  # sorted by base
        self._bases: list[int] = []  # parallel to _ranges, for bisect
        self._last_hit: _Range | None = None
        self.unhandled_reads = 0
        self.unhandled_writes = 0
        self.unhandled_by_address: dict[int, int] = {}
        # settle(range) runs before every access that reaches a device: the
        # fast path delivers the writes it deferred there (pyvmm.run.deferred).
        self.settle: Callable[[_Range], None] | None = None

    @classmethod
    def port_io(cls) -> Bus:
        return cls("pio", PORT_IO_LIMIT)

    @classmethod
    def mmio(cls) -> Bus:
        return cls("mmio", MMIO_LIMIT)

    # ---------------------------------------------------------------- setup

    def register(self, base: int, length: int, device: Any, name: str | None = None) -> None:
        """Route [base, base + length) to `device`; refuse bad or overlapping ranges."""
        if name is None:
            name = type(device).__name__
        if not (callable(getattr(device, "read", None)) and callable(getattr(device, "write", None))):
            raise BusError(f"bus {self.name!r}: device {name!r} lacks read()/write() methods")
        new_desc = f"{name!r} at [{base:#x}, {base + length:#x})"
        if length <= 0:
            raise BusError(f"bus {self.name!r}: cannot register {name!r} at {base:#x}: length {length} is not positive")
        if base < 0 or base + length > self.limit:
            raise BusError(
                f"bus {self.name!r}: cannot register {new_desc}: outside the bus range [0, {self.limit:#x})"
            )
        try:
            delivery = Delivery.declared_by(device, length, pio=self.limit == PORT_IO_LIMIT)
        except DeclarationError as error:
            raise BusError(f"bus {self.name!r}: cannot register {new_desc}: {error}") from None
        index = bisect.bisect_right(self._bases, base)
        # Only the neighbours on either side of the insertion point can overlap.
        if index > 0 and self._ranges[index - 1].end > base:
            self._refuse_overlap(new_desc, self._ranges[index - 1])
        if index < len(self._ranges) and self._ranges[index].base < base + length:
            self._refuse_overlap(new_desc, self._ranges[index])
        entry = _Range(base, base + length, name, device, delivery)
        self._ranges.insert(index, entry)
        self._bases.insert(index, base)

    def _refuse_overlap(self, new_desc: str, existing: _Range) -> None:
        raise BusError(f"bus {self.name!r}: cannot register {new_desc}: overlaps {existing.describe()}")

    def unregister(self, device_or_base: Any) -> None:
        """Remove the range starting at a base address, or every range of a device."""
        if isinstance(device_or_base, int):
            keep = [r for r in self._ranges if r.base != device_or_base]
            what = f"range at {device_or_base:#x}"
        else:
            keep = [r for r in self._ranges if r.device is not device_or_base]
            what = f"device {device_or_base!r}"
        if len(keep) == len(self._ranges):
            raise BusError(f"bus {self.name!r}: no {what} to unregister")
        self._ranges = keep
        self._bases = [r.base for r in self._ranges]
        self._last_hit = None

    def ranges(self) -> list[tuple[int, int, str]]:
        """(base, length, name) of every registered range, sorted by base."""
        return [(r.base, r.end - r.base, r.name) for r in self._ranges]

    def name_at(self, addr: int) -> str:
        """The name of the range containing `addr`, or "" (for reports)."""
        entry = self._find(addr, 1)
        return "" if entry is None else entry.name

    def device_at(self, addr: int) -> Any | None:
        """The device whose range contains `addr`, or None."""
        entry = self._find(addr, 1)
        return None if entry is None else entry.device

    def delivery_at(self, addr: int) -> Delivery | None:
        """The delivery declarations of the range containing `addr`, or None."""
        entry = self._find(addr, 1)
        return None if entry is None else entry.delivery

    def entries(self) -> list[_Range]:
        """The registered ranges (base, end, name, device, delivery), sorted by base."""
        return list(self._ranges)

    # ------------------------------------------------------------- hot path

    def _find(self, addr: int, size: int) -> _Range | None:
        """The range containing all of [addr, addr + size), or None."""
        index = bisect.bisect_right(self._bases, addr) - 1
        if index < 0:
            return None
        entry = self._ranges[index]
        if addr + size > entry.end:
            return None  # past the end of the closest range, or straddling it
        self._last_hit = entry
        return entry

    def read(self, addr: int, size: int) -> bytes:
        entry = self._last_hit
        if entry is None or addr < entry.base or addr + size > entry.end:
            entry = self._find(addr, size)
            if entry is None:
                self.unhandled_reads += 1
                self._count_unhandled(addr)
                return b"\xff" * size
        if self.settle is not None:
            self.settle(entry)
        try:
            data = entry.read(addr - entry.base, size)
        except Exception as error:
            raise DeviceFailure(self, entry, "read", addr, size, error) from error
        if len(data) != size:
            raise DeviceError(
                f"bus {self.name!r}: device {entry.describe()} returned {len(data)} bytes "
                f"for a {size}-byte read at {addr:#x}"
            )
        return data

    def write(self, addr: int, data: bytes, queued: bool = False) -> None:
        """A write; `queued`: a deferred write reaching its device now, which
        must not settle() (it is what settle() delivers)."""
        entry = self._last_hit
        if entry is None or addr < entry.base or addr + len(data) > entry.end:
            entry = self._find(addr, len(data))
            if entry is None:
                self.unhandled_writes += 1
                self._count_unhandled(addr)
                return
        if self.settle is not None and not queued:
            self.settle(entry)
        try:
            entry.write(addr - entry.base, data)
        except Exception as error:
            raise DeviceFailure(self, entry, "queued write" if queued else "write", addr, len(data),
                                error) from error

    def deliver_many(self, addr: int, size: int, data: bytes) -> None:
        """len(data) // size deferred writes of `size` bytes at `addr`, in order:
        one write_many(offset, size, data) call when the device has it."""
        entry = self._find(addr, size)
        write_many = None if entry is None else getattr(entry.device, "write_many", None)
        if write_many is None:
            for start in range(0, len(data) - size + 1, size):
                self.write(addr, data[start:start + size], queued=True)
        else:
            try:
                write_many(addr - entry.base, size, data)
            except Exception as error:
                raise DeviceFailure(self, entry, "queued write", addr, size, error) from error

    def _count_unhandled(self, addr: int) -> None:
        counts = self.unhandled_by_address
        if addr in counts:
            counts[addr] += 1
        elif len(counts) < MAX_TRACKED_UNHANDLED_ADDRESSES:
            counts[addr] = 1

    def __repr__(self) -> str:
        return f"Bus({self.name!r}, limit={self.limit:#x}, ranges={len(self._ranges)})"
