"""Drive devices, or whole buses, through access sequences without KVM, and
check the invariants every device must keep.

The device contract (pyvmm/devices/bus.py): `read(offset, size)` returns
exactly `size` bytes, `write(offset, data)` returns nothing, and neither
raises: a guest can do anything with a device's registers, so the
documented error of a device access is *none*.  `DeviceError` and
`BusError` are bugs when they come out of an access, like any other
exception.  `drive` checks, for every access of a sequence:

* no exception comes out of the bus or a device;
* a read returns bytes (or a bytearray) of exactly the size asked for;
* routing: the access reaches exactly the device whose range holds all of
  it (at offset address - base, with the same size and data), or no device
  at all, and then a read returns all-ones; nothing else sees anything.
  Sentinel devices (recorders) fill the `margin` bytes on each side of
  every device, so a device that reaches into its neighbours, or a bus
  that routes to the wrong one, shows up as an access the sentinel should
  not have seen.

The accesses are split the way the CPU and KVM split them before they
reach pyvmm: a string port access into `count` element accesses (the run
loop does this), and an MMIO access that crosses a 4 KiB page boundary into
the part before the boundary and the part after it (KVM's emulator does
this, so devices can see MMIO sizes 3, 5, 6 and 7).

`drive` returns a `Report`: per access, the bytes a read returned and the
device accesses (`Event`s) it caused.  replay.replay_on_kvm returns the
same shape from a real guest, so two paths can be compared.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable, List, Optional, Sequence

from pyvmm.devices.bus import MMIO_LIMIT, PORT_IO_LIMIT, Bus

from .strategies import DEFAULT_MARGIN, MMIO, PIO, READ, WRITE, Access

PAGE_SIZE = 4096


class InvariantViolation(AssertionError):
    """A device or the bus broke the device contract during an access."""


# ----------------------------------------------------------------- layout

@dataclass
class Placement:
    """A device registered at [base, base + length) of the "pio" or "mmio" bus."""

    kind: str
    base: int
    length: int
    device: Any
    name: Optional[str] = None
    sentinel: bool = False

    def __post_init__(self) -> None:
        if self.kind not in (PIO, MMIO):
            raise ValueError(f"unknown bus kind {self.kind!r}")
        if self.length <= 0:
            raise ValueError(f"placement length {self.length} is not positive")
        if self.name is None:
            self.name = f"{type(self.device).__name__}@{self.base:#x}"

    @property
    def end(self) -> int:
        return self.base + self.length

    def contains(self, address: int, size: int) -> bool:
        return self.base <= address and address + size <= self.end


@dataclass(frozen=True)
class Event:
    """One access a device saw: op "read" or "write", offset into its range,
    size, and the bytes returned (read) or written (write)."""

    device: str
    op: str
    offset: int
    size: int
    data: bytes

    def __repr__(self) -> str:
        return f"Event({self.device!r}, {self.op!r}, {self.offset:#x}, {self.size}, {self.data!r})"


@dataclass
class Outcome:
    """What one access did: `data`, the bytes a read returned to the guest
    (size * count), None for a write; `events`, the device accesses it caused."""

    access: Access
    data: Optional[bytes]
    events: List[Event] = field(default_factory=list)


@dataclass
class Report:
    """Per-access outcomes of a sequence (harness.drive or replay.replay_on_kvm).

    `run` is the RunResult of a KVM replay (None for the pure-Python
    harness), `inspected` what replay_on_kvm's inspect(machine) returned.
    """

    outcomes: List[Outcome]
    run: Any = None
    inspected: Any = None

    @property
    def events(self) -> List[Event]:
        """Every device access, in order."""
        return [event for outcome in self.outcomes for event in outcome.events]

    def reads(self) -> List[Optional[bytes]]:
        """Per access: the bytes read, or None for a write."""
        return [outcome.data for outcome in self.outcomes]


class Sentinel:
    """A recorder for the space around a device: answers reads with a
    recognisable pattern (0xa5 ^ offset byte by byte), keeps no state."""

    def read(self, offset: int, size: int) -> bytes:
        return bytes((0xA5 ^ (offset + i)) & 0xFF for i in range(size))

    def write(self, offset: int, data: bytes) -> None:
        pass


class _Probe:
    """Wraps a device: logs each access into the shared event list."""

    __slots__ = ("name", "device", "events")

    def __init__(self, name: str, device: Any, events: list) -> None:
        self.name = name
        self.device = device
        self.events = events

    def read(self, offset: int, size: int) -> bytes:
        data = self.device.read(offset, size)
        self.events.append(Event(self.name, READ, offset, size, _as_bytes(data)))
        return data

    def write(self, offset: int, data: bytes) -> None:
        self.events.append(Event(self.name, WRITE, offset, len(data), bytes(data)))
        self.device.write(offset, data)


def _as_bytes(data: Any) -> bytes:
    try:
        return bytes(data)
    except Exception:  # not bytes-like at all: the harness reports it
        return b""


class Rig:
    """Devices under test, each wrapped in a probe, with sentinel devices in
    the `margin` bytes on either side of each (clipped to the bus and to
    the other devices), registered on fresh port and MMIO buses (or on the
    given, empty-where-needed `port_bus` and `mmio_bus`).

    `placements`: Placement objects.  `reserved`: (kind, base, length) ranges
    where no sentinel may go (e.g. the devices of a Machine the rig will be
    registered on).  `register_on(port_bus, mmio_bus)` registers the same
    probes on other buses (replay_on_kvm uses a Machine's).
    """

    def __init__(self, placements: Iterable[Placement], margin: int = DEFAULT_MARGIN,
                 sentinels: bool = True, reserved: Iterable[tuple] = (),
                 port_bus: Optional[Bus] = None, mmio_bus: Optional[Bus] = None) -> None:
        self.events: list[Event] = []
        self.placements: list[Placement] = []
        given = list(placements)
        names = [p.name for p in given]
        if len(set(names)) != len(names):
            raise ValueError(f"placement names must be unique: {names}")
        for placement in sorted(given, key=lambda p: (p.kind, p.base)):
            self.placements.append(placement)
        self._check_overlaps(self.placements)
        if sentinels and margin > 0:
            self.placements.extend(self._sentinels(margin, list(reserved)))
            self.placements.sort(key=lambda p: (p.kind, p.base))
        self.probes = {p.name: _Probe(p.name, p.device, self.events) for p in self.placements}
        self.port_bus = Bus.port_io() if port_bus is None else port_bus
        self.mmio_bus = Bus.mmio() if mmio_bus is None else mmio_bus
        self.register_on(self.port_bus, self.mmio_bus)

    @staticmethod
    def _check_overlaps(placements: Sequence[Placement]) -> None:
        for kind in (PIO, MMIO):
            mine = sorted((p for p in placements if p.kind == kind), key=lambda p: p.base)
            for before, after in zip(mine, mine[1:]):
                if after.base < before.end:
                    raise ValueError(f"{before.name} and {after.name} overlap")

    def _sentinels(self, margin: int, reserved: list) -> list[Placement]:
        sentinels = []
        for kind, limit in ((PIO, PORT_IO_LIMIT), (MMIO, MMIO_LIMIT)):
            taken = sorted([(p.base, p.end) for p in self.placements if p.kind == kind]
                           + [(base, base + length) for k, base, length in reserved if k == kind])
            wanted = []
            for p in self.placements:
                if p.kind == kind:
                    wanted += [(max(0, p.base - margin), p.base), (p.end, min(limit, p.end + margin))]
            for start, end in _merge(wanted):
                for low, high in _subtract((start, end), taken):
                    sentinels.append(Placement(kind, low, high - low, Sentinel(),
                                               name=f"sentinel-{kind}@{low:#x}", sentinel=True))
                    taken.append((low, high))
                    taken.sort()
        return sentinels

    def register_on(self, port_bus: Bus, mmio_bus: Bus) -> None:
        for placement in self.placements:
            bus = port_bus if placement.kind == PIO else mmio_bus
            bus.register(placement.base, placement.length, self.probes[placement.name],
                         name=placement.name)

    def unregister_from(self, port_bus: Bus, mmio_bus: Bus) -> None:
        for placement in self.placements:
            (port_bus if placement.kind == PIO else mmio_bus).unregister(placement.base)

    def bus(self, kind: str) -> Bus:
        return self.port_bus if kind == PIO else self.mmio_bus

    def route(self, kind: str, address: int, size: int) -> Optional[Placement]:
        """The placement whose range holds all of [address, address + size), or None."""
        for placement in self.placements:
            if placement.kind == kind and placement.contains(address, size):
                return placement
        return None

    def placement(self, name: str) -> Placement:
        for placement in self.placements:
            if placement.name == name:
                return placement
        raise KeyError(name)


def _merge(ranges):
    merged = []
    for start, end in sorted(r for r in ranges if r[0] < r[1]):
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((start, end))
    return merged


def _subtract(span, taken):
    start, end = span
    pieces = []
    for low, high in sorted(taken):
        if high <= start or low >= end:
            continue
        if low > start:
            pieces.append((start, low))
        start = max(start, high)
    if start < end:
        pieces.append((start, end))
    return pieces


# ------------------------------------------------------------------ targets

def placements_of_bus(bus: Bus, kind: Optional[str] = None) -> list[Placement]:
    """The registrations of an existing Bus as placements (same devices, ranges and names)."""
    if kind is None:
        kind = PIO if bus.limit == PORT_IO_LIMIT else MMIO
    return [Placement(kind, base, length, bus.device_at(base), name=name or None)
            for base, length, name in bus.ranges()]


def _uniquely_named(placements: list[Placement]) -> list[Placement]:
    seen: dict[str, int] = {}
    for placement in placements:
        if placement.name in seen:
            seen[placement.name] += 1
            placement.name = f"{placement.name}#{seen[placement.name]}"
        else:
            seen[placement.name] = 0
    return placements


def buses_of(target: Any) -> Optional[tuple]:
    """(port_bus, mmio_bus) of a Bus (the other one None), a bus pair, or an
    object with port_bus and mmio_bus attributes; None for anything else."""
    if isinstance(target, Bus):
        return (target, None) if target.limit == PORT_IO_LIMIT else (None, target)
    if isinstance(target, tuple) and len(target) == 2 and all(isinstance(t, Bus) for t in target):
        return target
    port_bus, mmio_bus = getattr(target, "port_bus", None), getattr(target, "mmio_bus", None)
    if isinstance(port_bus, Bus) and isinstance(mmio_bus, Bus):
        return port_bus, mmio_bus
    return None


def as_placements(target: Any, base: Optional[int] = None, length: Optional[int] = None,
                  kind: str = PIO) -> list[Placement]:
    """What `drive` accepts as a target, as placements: a Placement, a list
    of them, a Bus, a (port_bus, mmio_bus) pair, an object with port_bus
    and mmio_bus attributes (a Machine, say), or a bare device with
    base=, length= (and kind=)."""
    if isinstance(target, Placement):
        return [target]
    if isinstance(target, (list, tuple)) and all(isinstance(t, Placement) for t in target):
        return list(target)     # () or []: no devices
    buses = buses_of(target)
    if buses is not None:
        port_bus, mmio_bus = buses
        return _uniquely_named((placements_of_bus(port_bus, PIO) if port_bus else [])
                               + (placements_of_bus(mmio_bus, MMIO) if mmio_bus else []))
    if callable(getattr(target, "read", None)) and callable(getattr(target, "write", None)):
        if base is None or length is None:
            raise TypeError("driving a bare device needs base= and length=")
        return [Placement(kind, base, length, target)]
    raise TypeError(f"cannot drive {target!r}: give a device (with base=, length=), "
                    f"Placement(s), a Bus, a bus pair or a Rig")


# -------------------------------------------------------------------- drive

def pieces(access_kind: str, address: int, size: int, data: Optional[bytes], page_split: bool = True):
    """The bus accesses one element becomes: an MMIO element that crosses a
    4 KiB boundary is split there (as KVM does), anything else stays whole."""
    if access_kind == MMIO and page_split:
        first = PAGE_SIZE - (address % PAGE_SIZE)
        if first < size:
            return [(address, first, None if data is None else data[:first]),
                    (address + first, size - first, None if data is None else data[first:])]
    return [(address, size, data)]


def expected_events(rig: Rig, access: Access, data: Optional[bytes], page_split: bool = True) -> list:
    """The device accesses `access` must cause, given the bytes the guest read."""
    events = []
    position = 0
    for address, size, written in access.elements():
        for piece_addr, piece_size, piece_data in pieces(access.kind, address, size, written, page_split):
            target = rig.route(access.kind, piece_addr, piece_size)
            if written is None:
                piece_data = None if data is None else data[position:position + piece_size]
            position += piece_size
            if target is not None:
                events.append(Event(target.name, access.direction, piece_addr - target.base,
                                    piece_size, piece_data))
    return events


def check_outcome(rig: Rig, index: int, outcome: Outcome, page_split: bool = True) -> None:
    """Raises InvariantViolation unless the outcome routed as the rig says."""
    access = outcome.access
    where = f"access #{index} {access!r}"
    if access.is_write:
        if outcome.data is not None:
            raise InvariantViolation(f"{where}: a write returned data")
    elif outcome.data is None or len(outcome.data) != access.length:
        raise InvariantViolation(f"{where}: read {outcome.data!r}, expected {access.length} bytes")
    expected = expected_events(rig, access, outcome.data, page_split)
    if outcome.events != expected:
        raise InvariantViolation(
            f"{where}: wrong routing\n  device accesses seen:     {outcome.events}\n"
            f"  device accesses expected: {expected}")
    if access.is_write:
        return
    position = 0
    for address, size, _ in access.elements():
        for piece_addr, piece_size, _ in pieces(access.kind, address, size, None, page_split):
            if rig.route(access.kind, piece_addr, piece_size) is None:
                got = outcome.data[position:position + piece_size]
                if got != b"\xff" * piece_size:
                    raise InvariantViolation(f"{where}: {piece_size}-byte read at {piece_addr:#x} "
                                             f"reached no device but returned {got!r}, not all-ones")
            position += piece_size


def _perform(rig: Rig, index: int, access: Access, page_split: bool) -> Outcome:
    bus = rig.bus(access.kind)
    start = len(rig.events)
    read = bytearray() if not access.is_write else None
    for address, size, data in access.elements():
        for piece_addr, piece_size, piece_data in pieces(access.kind, address, size, data, page_split):
            try:
                if piece_data is None:
                    result = bus.read(piece_addr, piece_size)
                else:
                    result = bus.write(piece_addr, piece_data)
            except Exception as error:
                target = rig.route(access.kind, piece_addr, piece_size)
                who = target.name if target else "the bus (no device)"
                raise InvariantViolation(
                    f"access #{index} {access!r}: {type(error).__name__} from {who} "
                    f"({'read' if piece_data is None else 'write'} of {piece_size} at "
                    f"{piece_addr:#x}): {error}") from error
            if piece_data is None:
                if not isinstance(result, (bytes, bytearray)) or len(result) != piece_size:
                    raise InvariantViolation(
                        f"access #{index} {access!r}: a {piece_size}-byte read at {piece_addr:#x} "
                        f"returned {result!r}, not {piece_size} bytes")
                read += result
            elif result is not None:
                raise InvariantViolation(f"access #{index} {access!r}: write returned {result!r}")
    return Outcome(access, None if read is None else bytes(read), list(rig.events[start:]))


def drive(target: Any, accesses: Iterable[Access], *, base: Optional[int] = None,
          length: Optional[int] = None, kind: str = PIO, margin: int = DEFAULT_MARGIN,
          sentinels: bool = True, page_split: bool = True, check: bool = True) -> Report:
    """Runs `accesses` against `target` and checks the device contract.

    `target`: a Rig; a device with base=, length= and kind= ("pio" or
    "mmio"); a Placement or a list of them (these get fresh buses); a Bus,
    a (port_bus, mmio_bus) pair or an object with port_bus and mmio_bus (a
    Machine): these are driven through their own routing code, each of
    their devices wrapped in a probe for the duration (their registrations
    are restored afterwards).  Unless the target is a Rig, sentinels fill
    `margin` bytes around each device (`sentinels=False`: none).

    Raises InvariantViolation (an AssertionError) at the first access that
    breaks the contract; with check=False only exceptions and wrong read
    sizes are checked, not routing.  Returns the Report.
    """
    if isinstance(target, Rig):
        return _drive_rig(target, accesses, page_split, check)
    buses = buses_of(target)
    if buses is None:
        rig = Rig(as_placements(target, base, length, kind), margin=margin, sentinels=sentinels)
        return _drive_rig(rig, accesses, page_split, check)
    # An existing bus: swap each device for a probe around it, in place.
    port_bus, mmio_bus = buses[0] or Bus.port_io(), buses[1] or Bus.mmio()
    originals = [(port_bus, entry) for entry in port_bus.ranges()]
    originals += [(mmio_bus, entry) for entry in mmio_bus.ranges()]
    placements = as_placements((port_bus, mmio_bus))
    devices = [bus.device_at(entry[0]) for bus, entry in originals]
    for bus, (range_base, _, _) in originals:
        bus.unregister(range_base)
    rig = None
    try:
        rig = Rig(placements, margin=margin, sentinels=sentinels, port_bus=port_bus, mmio_bus=mmio_bus)
        return _drive_rig(rig, accesses, page_split, check)
    finally:
        if rig is not None:
            rig.unregister_from(port_bus, mmio_bus)
        for (bus, (range_base, range_length, name)), device in zip(originals, devices):
            bus.register(range_base, range_length, device, name=name)


def _drive_rig(rig: Rig, accesses: Iterable[Access], page_split: bool, check: bool) -> Report:
    outcomes = []
    for index, access in enumerate(accesses):
        outcome = _perform(rig, index, access, page_split)
        if check:
            check_outcome(rig, index, outcome, page_split)
        outcomes.append(outcome)
    return Report(outcomes)


def compare_reports(expected: Report, actual: Report) -> list[str]:
    """Differences between two reports of the same sequence, one line each."""
    differences = []
    if len(expected.outcomes) != len(actual.outcomes):
        differences.append(f"{len(expected.outcomes)} outcomes vs {len(actual.outcomes)}")
    for index, (a, b) in enumerate(zip(expected.outcomes, actual.outcomes)):
        if a.access != b.access:
            differences.append(f"#{index}: different accesses {a.access!r} vs {b.access!r}")
            continue
        if a.data != b.data:
            differences.append(f"#{index} {a.access!r}: read {a.data!r} vs {b.data!r}")
        if a.events != b.events:
            differences.append(f"#{index} {a.access!r}: device accesses\n    {a.events}\n vs {b.events}")
    return differences


def assert_same_reports(expected: Report, actual: Report, labels=("harness", "kvm")) -> None:
    """AssertionError listing every difference between two reports."""
    differences = compare_reports(expected, actual)
    if differences:
        raise AssertionError(f"{labels[0]} and {labels[1]} disagree:\n" + "\n".join(differences))
