"""Device state as plain data: what a device saves for a snapshot or a
checkpoint, and how it checks what it is given back.

A device that can be snapshotted has two methods:

    save_state() -> dict
        everything the guest could observe later, and what the host side
        holds for it (unread input), as plain data json can write: dicts with
        string keys, lists, ints, floats, bools, None and strings (bytes as
        hex). Called while no vCPU runs and after every write the guest made
        was delivered (the deferred-write queue is empty), so the state is
        the one the guest saw at its last exit.
    restore_state(state) -> None
        makes the device exactly that again, on a device built with the same
        configuration (attached, with its context, before the guest runs) or
        on itself (a reset to a checkpoint): the registers, FIFOs and
        counters, its interrupt line moved to the saved level if it is not
        there (the device's record of its line is what the interrupt
        controller holds: a new device's lines are low), and what it
        publishes to the fast path. It checks every
        field and raises DeviceStateError (a ValueError) for a state it cannot
        take, leaving itself usable; nothing else may come out of it.

A device with a worker thread saves after the worker finished what was
queued, and saves what is still pending (timers, requests in flight) as part
of its state. Time is saved relative to what the guest sees: a counter that
stops while the guest is not running (the ACPI PM timer) saves its count; a
wall clock (the RTC) saves its offset from the host's clock.

StateReader checks the fields a device reads back, one call per field.
"""

from __future__ import annotations

import re
from typing import Any, Optional

_NONZERO = re.compile(rb"[^\x00]+")


class DeviceStateError(ValueError):
    """A saved device state that the device cannot take; the message names the field."""


class StateReader:
    """Reads a saved state's fields, each checked; finish() refuses unknown keys.

        reader = StateReader(state, "serial")
        lcr = reader.integer("lcr", 0, 0xFF)
        rx = reader.data("rx", max_length=16)
        reader.finish()
    """

    def __init__(self, state: Any, device: str) -> None:
        if not isinstance(state, dict):
            raise DeviceStateError(f"{device}: the saved state is {type(state).__name__}, not an object")
        self.state = state
        self.device = device
        self._read: set = set()

    def _get(self, key: str) -> Any:
        if key not in self.state:
            raise DeviceStateError(f"{self.device}: the saved state has no {key!r}")
        self._read.add(key)
        return self.state[key]

    def fail(self, key: str, why: str) -> DeviceStateError:
        return DeviceStateError(f"{self.device}: {key}: {why}")

    def integer(self, key: str, low: int, high: int) -> int:
        value = self._get(key)
        if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
            raise self.fail(key, f"{value!r} is not an integer in [{low}, {high}]")
        return value

    def optional_integer(self, key: str, low: int, high: int) -> Optional[int]:
        if self.state.get(key, 0) is None:
            self._read.add(key)
            return None
        return self.integer(key, low, high)

    def number(self, key: str, low: float, high: float) -> float:
        value = self._get(key)
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not low <= value <= high:
            raise self.fail(key, f"{value!r} is not a number in [{low}, {high}]")
        return float(value)

    def boolean(self, key: str) -> bool:
        value = self._get(key)
        if not isinstance(value, bool):
            raise self.fail(key, f"{value!r} is not true or false")
        return value

    def data(self, key: str, max_length: int, length: Optional[int] = None) -> bytes:
        """Bytes saved as a hex string."""
        value = self._get(key)
        if not isinstance(value, str) or len(value) > 2 * max_length:
            raise self.fail(key, f"not a hex string of at most {max_length} bytes")
        try:
            raw = bytes.fromhex(value)
        except ValueError:
            raise self.fail(key, "not a hex string") from None
        if length is not None and len(raw) != length:
            raise self.fail(key, f"{len(raw)} bytes, expected {length}")
        return raw

    def items(self, key: str, max_length: int) -> list:
        value = self._get(key)
        if not isinstance(value, list) or len(value) > max_length:
            raise self.fail(key, f"not a list of at most {max_length} items")
        return value

    def nested(self, key: str) -> Any:
        """A field another object checks (a part's own state)."""
        return self._get(key)

    def finish(self) -> None:
        unknown = sorted(str(key) for key in self.state if key not in self._read)
        if unknown:
            raise DeviceStateError(f"{self.device}: unknown fields {', '.join(unknown)}")


def sparse_runs(memory: bytes, gap: int = 16) -> list:
    """The non-zero stretches of `memory` as [[offset, hex], ...] (stretches
    less than `gap` zero bytes apart joined), so a mostly empty memory saves
    in a few bytes."""
    spans: list = []
    if memory == bytes(len(memory)):            # the usual case, at memcmp's speed
        return spans
    for match in _NONZERO.finditer(memory):
        start, end = match.span()
        if spans and start - spans[-1][1] < gap:
            spans[-1][1] = end
        else:
            spans.append([start, end])
    return [[start, bytes(memory[start:end]).hex()] for start, end in spans]


def apply_runs(reader: StateReader, key: str, memory: bytearray) -> None:
    """Zeroes `memory`, then writes the runs sparse_runs saved (checked)."""
    runs = reader.items(key, len(memory))
    memory[:] = bytes(len(memory))
    for run in runs:
        if not (isinstance(run, list) and len(run) == 2 and isinstance(run[0], int)
                and not isinstance(run[0], bool) and isinstance(run[1], str)):
            raise reader.fail(key, f"{run!r} is not [offset, hex]")
        try:
            data = bytes.fromhex(run[1])
        except ValueError:
            raise reader.fail(key, "not a hex string") from None
        if not 0 <= run[0] <= len(memory) - len(data):
            raise reader.fail(key, f"a run at {run[0]} of {len(data)} bytes is outside the memory")
        memory[run[0]:run[0] + len(data)] = data
