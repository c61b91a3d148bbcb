"""POST-code port 0x80: firmware and kernels write progress codes (and Linux
writes it as an I/O delay); we record them for `--stats`.

Register it at 0x80, length 1.  Writes of any size are accepted; the value
is the little-endian integer of the written bytes.  The last
HISTORY_LIMIT writes are kept as (timestamp_ns, value) pairs, with
`total_writes` counting all of them.

Reads return all-ones, as QEMU's ioport80_read (hw/i386/pc.c returns
0xffffffffffffffff; its ioport80_write ignores the value).  A POST card
does not drive the bus on reads, so nothing is read back.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from typing import Callable, Optional

from .state import StateReader

POST_LENGTH = 1
HISTORY_LIMIT = 1024


class PostCode:
    # A write is only recorded; under the fast path it is timestamped when
    # delivered (see devices/bus.py, "posted writes").
    posted_writes = ((0, 1),)

    def __init__(self, now: Callable[[], int] = time.monotonic_ns, history_limit: int = HISTORY_LIMIT) -> None:
        self._now = now
        self._lock = threading.Lock()
        self._history: deque[tuple[int, int]] = deque(maxlen=history_limit)
        self.total_writes = 0
        self.last_value: Optional[int] = None

    def read(self, offset: int, size: int) -> bytes:
        return b"\xff" * size

    def write(self, offset: int, data: bytes) -> None:
        value = int.from_bytes(data, "little")
        timestamp = self._now()
        with self._lock:
            self._history.append((timestamp, value))
            self.total_writes += 1
            self.last_value = value

    def history(self) -> list[tuple[int, int]]:
        """The most recent writes, oldest first, as (timestamp_ns, value)."""
        with self._lock:
            return list(self._history)

    def save_state(self) -> dict:
        with self._lock:
            return {"history": [[stamp, value] for stamp, value in self._history],
                    "total_writes": self.total_writes, "last_value": self.last_value}

    def restore_state(self, state: dict) -> None:
        reader = StateReader(state, "post")
        history = []
        for item in reader.items("history", self._history.maxlen or 0):
            if not (isinstance(item, list) and len(item) == 2
                    and all(isinstance(x, int) and not isinstance(x, bool) for x in item)
                    and 0 <= item[1] < 1 << 32):
                raise reader.fail("history", f"{item!r} is not [time ns, value]")
            history.append((item[0], item[1]))
        total = reader.integer("total_writes", len(history), 1 << 64)
        last = reader.optional_integer("last_value", 0, (1 << 32) - 1)
        reader.finish()
        with self._lock:
            self._history.clear()
            self._history.extend(history)
            self.total_writes, self.last_value = total, last

    def stats(self) -> dict[str, object]:
        with self._lock:
            return {
                "writes": self.total_writes,
                "last": self.last_value,
                "recent": list(self._history),
            }

    def __repr__(self) -> str:
        last = "none" if self.last_value is None else f"{self.last_value:#x}"
        return f"PostCode(writes={self.total_writes}, last={last})"
