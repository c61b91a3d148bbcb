"""Hypothesis strategies for guest device accesses.

An `Access` is one guest instruction's worth of device I/O: an `in`/`out`
(port I/O, 1, 2 or 4 bytes), a `rep ins`/`rep outs` of `count` elements, or
a `mov` to or from MMIO (1, 2, 4 or 8 bytes).  The strategies aim accesses
at one device range and at its surroundings: well inside it, at its first
and last bytes, just before and just after it, and straddling either edge,
which is where routing bugs live.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Optional, Sequence

from hypothesis import strategies as st

PIO, MMIO = "pio", "mmio"
READ, WRITE = "read", "write"
KINDS = (PIO, MMIO)
DIRECTIONS = (READ, WRITE)
PIO_SIZES = (1, 2, 4)
MMIO_SIZES = (1, 2, 4, 8)
PORT_LIMIT = 0x10000
MMIO_LIMIT = 1 << 64
DEFAULT_MARGIN = 8
DEFAULT_MAX_COUNT = 4
DEFAULT_MAX_ACCESSES = 20


@dataclass(frozen=True)
class Access:
    """One guest access.

    kind: "pio" or "mmio"; direction: "read" or "write"; address: port or
    guest-physical address; size: element size in bytes; count: elements of
    a string port access (`rep ins`/`rep outs`; 1 for a plain access, always
    1 for MMIO); data: for writes, the size * count bytes written
    (little-endian, element after element), b"" for reads.
    """

    kind: str
    direction: str
    address: int
    size: int
    count: int = 1
    data: bytes = b""

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown access kind {self.kind!r}")
        if self.direction not in DIRECTIONS:
            raise ValueError(f"unknown direction {self.direction!r}")
        sizes = PIO_SIZES if self.kind == PIO else MMIO_SIZES
        if self.size not in sizes:
            raise ValueError(f"{self.kind} access size {self.size} (valid: {sizes})")
        if self.count < 1 or (self.kind == MMIO and self.count != 1):
            raise ValueError(f"bad count {self.count} for a {self.kind} access")
        limit = PORT_LIMIT if self.kind == PIO else MMIO_LIMIT
        if not 0 <= self.address < limit:
            raise ValueError(f"address {self.address:#x} outside the {self.kind} space")
        expected = self.size * self.count if self.direction == WRITE else 0
        if len(self.data) != expected:
            raise ValueError(f"{self.direction} of {self.size} x {self.count} carries "
                             f"{len(self.data)} data bytes (expected {expected})")

    @property
    def is_write(self) -> bool:
        return self.direction == WRITE

    @property
    def length(self) -> int:
        """Bytes moved: size * count."""
        return self.size * self.count

    def elements(self) -> Iterator[tuple[int, int, Optional[bytes]]]:
        """(address, size, data or None) of each element, in order: what
        the run loop hands to the bus for a string access."""
        for index in range(self.count):
            data = self.data[index * self.size:(index + 1) * self.size] if self.is_write else None
            yield self.address, self.size, data

    def __repr__(self) -> str:
        parts = [repr(self.kind), repr(self.direction), f"{self.address:#x}", str(self.size)]
        if self.count != 1:
            parts.append(f"count={self.count}")
        if self.data:
            parts.append(f"data={self.data!r}")
        return f"Access({', '.join(parts)})"


# --------------------------------------------------------------- addresses

def _clamp(low: int, high: int, lo: int, hi: int) -> Optional[tuple[int, int]]:
    low, high = max(low, lo), min(high, hi)
    return (low, high) if low <= high else None


def addresses_around(base: int, length: int, size: int, margin: int = DEFAULT_MARGIN,
                     limit: int = MMIO_LIMIT) -> st.SearchStrategy[int]:
    """Start addresses for `size`-byte accesses inside, at the edges of,
    before, after and straddling [base, base + length); always with
    0 <= address <= limit - size."""
    if length <= 0:
        raise ValueError("length must be positive")
    end = base + length
    top = limit - size
    windows = [
        (base, end - size),                  # inside
        (base, base),                        # first byte
        (end - size, end - size),            # last element
        (base - margin, base - size),        # wholly before
        (end, end + margin - size),          # wholly after
        (base - size + 1, base - 1),         # straddling the start
        (end - size + 1, end - 1),           # straddling the end
    ]
    ranges = []
    for low, high in windows:
        clamped = _clamp(low, high, 0, top)
        if clamped and clamped not in ranges:
            ranges.append(clamped)
    if not ranges:  # a tiny space: anything valid
        ranges.append((0, max(0, top)))
    return st.one_of([st.integers(low, high) for low, high in ranges])


def _access(kind: str, base: int, length: int, margin: int, sizes: Sequence[int],
            directions: Sequence[str], max_count: int, limit: int) -> st.SearchStrategy[Access]:
    @st.composite
    def build(draw):
        size = draw(st.sampled_from(list(sizes)))
        direction = draw(st.sampled_from(list(directions)))
        address = draw(addresses_around(base, length, size, margin, limit))
        count = 1
        if kind == PIO and max_count > 1:
            # Mostly single accesses; sometimes a rep ins/outs.
            count = draw(st.one_of(st.just(1), st.integers(1, max_count)))
        data = b""
        if direction == WRITE:
            data = draw(st.binary(min_size=size * count, max_size=size * count))
        return Access(kind, direction, address, size, count, data)

    return build()


def port_accesses(base: int, length: int, margin: int = DEFAULT_MARGIN,
                  sizes: Sequence[int] = PIO_SIZES, directions: Sequence[str] = DIRECTIONS,
                  max_count: int = DEFAULT_MAX_COUNT) -> st.SearchStrategy[Access]:
    """Port I/O accesses in and around ports [base, base + length): `in`/`out`
    of every size and, up to `max_count` elements, `rep ins`/`rep outs`."""
    for size in sizes:
        if size not in PIO_SIZES:
            raise ValueError(f"port I/O size {size} (valid: {PIO_SIZES})")
    return _access(PIO, base, length, margin, sizes, directions, max_count, PORT_LIMIT)


def mmio_accesses(base: int, length: int, margin: int = DEFAULT_MARGIN,
                  sizes: Sequence[int] = MMIO_SIZES,
                  directions: Sequence[str] = DIRECTIONS) -> st.SearchStrategy[Access]:
    """MMIO accesses of every size in and around [base, base + length)."""
    for size in sizes:
        if size not in MMIO_SIZES:
            raise ValueError(f"MMIO size {size} (valid: {MMIO_SIZES})")
    return _access(MMIO, base, length, margin, sizes, directions, 1, MMIO_LIMIT)


def accesses_for(ranges, margin: int = DEFAULT_MARGIN,
                 max_count: int = DEFAULT_MAX_COUNT) -> st.SearchStrategy[Access]:
    """Accesses around any of `ranges`: (kind, base, length) tuples or
    objects with kind/base/length attributes (harness.Placement)."""
    options = []
    for entry in ranges:
        kind, base, length = _range_of(entry)
        if kind == PIO:
            options.append(port_accesses(base, length, margin, max_count=max_count))
        else:
            options.append(mmio_accesses(base, length, margin))
    if not options:
        raise ValueError("no ranges to aim at")
    return st.one_of(options)


def _range_of(entry) -> tuple[str, int, int]:
    if isinstance(entry, tuple):
        kind, base, length = entry[:3]
    else:
        kind, base, length = entry.kind, entry.base, entry.length
    if kind not in KINDS:
        raise ValueError(f"unknown access kind {kind!r}")
    return kind, base, length


def access_sequences(*strategies: st.SearchStrategy[Access], min_size: int = 0,
                     max_size: int = DEFAULT_MAX_ACCESSES) -> st.SearchStrategy[list]:
    """Lists of accesses drawn from any of `strategies` (e.g. port_accesses
    of two devices), at most `max_size` long."""
    if not strategies:
        raise ValueError("access_sequences needs at least one access strategy")
    element = strategies[0] if len(strategies) == 1 else st.one_of(strategies)
    return st.lists(element, min_size=min_size, max_size=max_size)
