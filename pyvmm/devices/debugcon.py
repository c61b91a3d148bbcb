"""QEMU's isa-debugcon ("port E9" Bochs debug console): a write-only byte
console that firmware and kernels (earlyprintk) can use without any setup.

Register it at 0xe9, length 1.  Mirrors QEMU hw/char/debugcon.c:
* each write sends its byte to `output(bytes)`; QEMU's ops accept 1-byte
  accesses only, so of a wider write only the low byte (the one at 0xe9)
  reaches the console;
* reads return the "readback" value, 0xe9 by default: the Bochs "port E9
  hack" convention by which a guest detects that the console is there.
"""

from __future__ import annotations

from typing import Callable

from .bus import ONE_BYTE
from .state import StateReader

DEBUGCON_LENGTH = 1
READBACK = 0xE9


class DebugConsole:
    # A write only prints (see devices/bus.py, "posted writes").
    posted_writes = ((0, 1),)

    def __init__(self, output: Callable[[bytes], None], readback: int = READBACK) -> None:
        self._output = output
        self._readback = bytes((readback & 0xFF,))
        self.bytes_written = 0

    def read(self, offset: int, size: int) -> bytes:
        if offset != 0:
            return b"\xff" * size  # not our port
        return self._readback + b"\xff" * (size - 1)

    def write(self, offset: int, data: bytes) -> None:
        if offset != 0 or not data:
            return
        self.bytes_written += 1
        self._output(ONE_BYTE[data[0]])

    def save_state(self) -> dict:
        return {"bytes_written": self.bytes_written}

    def restore_state(self, state: dict) -> None:
        reader = StateReader(state, "debugcon")
        written = reader.integer("bytes_written", 0, 1 << 64)
        reader.finish()
        self.bytes_written = written

    def __repr__(self) -> str:
        return f"DebugConsole(bytes_written={self.bytes_written})"
