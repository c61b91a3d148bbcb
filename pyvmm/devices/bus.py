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

Posted writes (optional): a device may list ``posted_writes``, pairs of
(offset, length) inside its range where a write has no effect but on the
device's own state or output stream: no interrupt, no answer, nothing
another device or the VM must see at once.  The fast path (pyvmm.fastpath)
lets KVM queue such writes in its coalesced ring instead of exiting, and
delivers them later, in order, before any exit is handled, so the device
still sees every access in guest order; only their timing moves.  The
Python loop ignores the attribute.

Accesses that hit no device, or that straddle the boundary of a registered
range, are "unhandled": a read returns all-ones (what an ISA bus with nothing
driving it returns), a write is dropped, and both are counted.  The guest can
never make the bus raise; only a buggy device can (`DeviceError`).
"""

from __future__ import annotations

import bisect
from typing import Any, Callable

PORT_IO_LIMIT = 0x10000
MMIO_LIMIT = 1 << 64

# Probing guests can touch many distinct unhandled addresses (think of a
# driver scanning MMIO); stop tracking new addresses past this many so the
# per-address statistics cannot grow without bound.  Totals keep counting.
MAX_TRACKED_UNHANDLED_ADDRESSES = 4096


class BusError(Exception):
    """A device range could not be registered or unregistered."""


class DeviceError(Exception):
    """A device broke the device contract (e.g. returned the wrong size)."""


class _Range:
    """One registered range; compared by identity."""

    __slots__ = ("base", "end", "name", "device", "read", "write")

    def __init__(self, base: int, end: int, name: str, device: Any) -> None:
        self.base = base
        self.end = end  # exclusive
        self.name = name
        self.device = device
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
        index = bisect.bisect_right(self._bases, base)
        # Only the neighbours on either side of the insertion point can overlap.
        if index > 0 and self._ranges[index - 1].end > base:
            self._refuse_overlap(new_desc, self._ranges[index - 1])
        if index < len(self._ranges) and self._ranges[index].base < base + length:
            self._refuse_overlap(new_desc, self._ranges[index])
        entry = _Range(base, base + length, name, device)
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

    def interpose(self, base: int, before: Callable[[], None]) -> Callable[[], None]:
        """Calls `before()` ahead of every access to the range at `base`, until
        the returned function is called (the fast path delivers a device's
        doorbell writes this way before its next access)."""
        entry = next((r for r in self._ranges if r.base == base), None)
        if entry is None:
            raise BusError(f"bus {self.name!r}: no range at {base:#x} to interpose on")
        read, write = entry.read, entry.write

        def read_after(offset: int, size: int) -> bytes:
            before()
            return read(offset, size)

        def write_after(offset: int, data: bytes) -> None:
            before()
            write(offset, data)

        entry.read, entry.write = read_after, write_after

        def restore() -> None:
            entry.read, entry.write = read, write

        return restore

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
        data = entry.read(addr - entry.base, size)
        if len(data) != size:
            raise DeviceError(
                f"bus {self.name!r}: device {entry.describe()} returned {len(data)} bytes "
                f"for a {size}-byte read at {addr:#x}"
            )
        return data

    def write(self, addr: int, data: bytes) -> None:
        entry = self._last_hit
        if entry is None or addr < entry.base or addr + len(data) > entry.end:
            entry = self._find(addr, len(data))
            if entry is None:
                self.unhandled_writes += 1
                self._count_unhandled(addr)
                return
        entry.write(addr - entry.base, data)

    def _count_unhandled(self, addr: int) -> None:
        counts = self.unhandled_by_address
        if addr in counts:
            counts[addr] += 1
        elif len(counts) < MAX_TRACKED_UNHANDLED_ADDRESSES:
            counts[addr] = 1

    def __repr__(self) -> str:
        return f"Bus({self.name!r}, limit={self.limit:#x}, ranges={len(self._ranges)})"
