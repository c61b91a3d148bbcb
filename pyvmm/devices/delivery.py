"""Delivery declarations: which of a device's registers may be posted, cached
or rung as doorbells (the contract is in pyvmm/devices/bus.py), checked once
when the device is registered, and the state a device publishes for them.
"""

from __future__ import annotations

import threading
from typing import Any, Callable, Optional

PORT_SIZES = (1, 2, 4)
MMIO_SIZES = (1, 2, 3, 4, 5, 6, 7, 8)
DOORBELL_SIZES = (1, 2, 4, 8)           # what a KVM ioeventfd can match


class DeclarationError(ValueError):
    """A device's posted_writes, cached_reads or doorbells cannot be honoured."""


class Delivery:
    """A registered range's declarations, in offsets from its base.

    `posted`: ((offset, length), ...); `cached`: ((offset, size), ...);
    `doorbells`: ((offset, size, value), ...). `registers` is the range's
    RegisterState.
    """

    def __init__(self, posted=(), cached=(), doorbells=()):
        self.posted = tuple(posted)
        self.cached = tuple(cached)
        self.doorbells = tuple(doorbells)
        self.registers = RegisterState(self)

    def __bool__(self) -> bool:
        return bool(self.posted or self.cached or self.doorbells)

    @classmethod
    def declared_by(cls, device: Any, length: int, pio: bool) -> Delivery:
        """The device's declarations for a range of `length`, checked."""
        sizes = PORT_SIZES if pio else MMIO_SIZES
        posted = _entries(device, "posted_writes", 2)
        cached = _entries(device, "cached_reads", 2)
        doorbells = _entries(device, "doorbells", 3)
        for offset, size in posted:
            _inside("posted write", offset, size, length)
        for offset, size in cached:
            if size not in sizes:
                raise DeclarationError(f"cached read at {offset:#x}: size {size} is not one of {sizes}")
            _inside("cached read", offset, size, length)
        for offset, size, value in doorbells:
            if size not in DOORBELL_SIZES or (pio and size not in PORT_SIZES):
                raise DeclarationError(f"doorbell at {offset:#x}: size {size} cannot be matched")
            _inside("doorbell", offset, size, length)
            if not 0 <= value < 1 << (8 * size):
                raise DeclarationError(f"doorbell at {offset:#x}: value {value:#x} does not fit in {size} bytes")
        if posted and doorbells:
            raise DeclarationError("a device cannot have both posted_writes and doorbells: "
                                   "the order of the two kinds of writes could not be kept")
        _no_overlap("posted write", posted)
        _no_overlap("cached read", cached)
        return cls(posted, cached, doorbells)


class RegisterState:
    """What a device publishes about its declared registers, while it runs.

    allow_posted(offset, allowed): whether writes to the posted range that
    starts at `offset` may be queued now (initially they may).
    publish(offset, value): the value a read of the cached register at
    `offset` returns now, or None when only the device can answer (a read
    with a side effect); initially None.

    A fast path that binds a listener hears every change, on the thread that
    makes it, in order (a device calls these with its own lock held).
    """

    def __init__(self, delivery: Delivery) -> None:
        self.posting = {offset: True for offset, _ in delivery.posted}
        self.values: dict[int, Optional[int]] = {offset: None for offset, _ in delivery.cached}
        self.listener: Optional[Callable[[str, int], None]] = None
        self._lock = threading.Lock()       # a change and its notice, or a bind, at a time

    def bind(self, listener: Optional[Callable[[str, int], None]]) -> None:
        """Makes `listener(kind, offset)` hear every change from now on, and
        tells it every register's current state first (None: unbinds)."""
        with self._lock:
            self.listener = listener
            if listener is not None:
                for offset in self.posting:
                    listener("posted", offset)
                for offset in self.values:
                    listener("cached", offset)

    def allow_posted(self, offset: int, allowed: bool) -> None:
        if offset not in self.posting:
            raise KeyError(f"no posted range declared at offset {offset:#x}")
        allowed = bool(allowed)
        with self._lock:
            if self.posting[offset] != allowed:
                self.posting[offset] = allowed
                if self.listener is not None:
                    self.listener("posted", offset)

    def publish(self, offset: int, value: Optional[int]) -> None:
        if offset not in self.values:
            raise KeyError(f"no cached read declared at offset {offset:#x}")
        with self._lock:
            if self.values[offset] != value:
                self.values[offset] = value
                if self.listener is not None:
                    self.listener("cached", offset)


def _entries(device: Any, name: str, width: int) -> list:
    declared = getattr(device, name, ())
    try:
        entries = [tuple(entry) for entry in declared]
    except TypeError:
        raise DeclarationError(f"{name} must be a sequence of tuples") from None
    for entry in entries:
        if len(entry) != width or not all(isinstance(field, int) and not isinstance(field, bool)
                                          for field in entry):
            raise DeclarationError(f"{name}: {entry!r} is not {width} integers")
    return entries


def _inside(what: str, offset: int, size: int, length: int) -> None:
    if size <= 0 or offset < 0 or offset + size > length:
        raise DeclarationError(f"{what} at {offset:#x} of {size} bytes is outside the "
                               f"{length}-byte range")


def _no_overlap(what: str, entries: list) -> None:
    spans = sorted((offset, offset + size) for offset, size in entries)
    for (_, end), (start, _) in zip(spans, spans[1:]):
        if start < end:
            raise DeclarationError(f"{what}s overlap at offset {start:#x}")
