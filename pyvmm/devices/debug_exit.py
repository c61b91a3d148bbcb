"""QEMU's isa-debug-exit device: lets a test guest end the VM with a status.

Usually placed at port 0xf4 with 4 ports (QEMU: -device
isa-debug-exit,iobase=0xf4,iosize=0x04).  Writing value v makes QEMU exit
with status (v << 1) | 1, so a guest can never fake a clean exit 0; the
process exit code the OS reports is that status truncated to 8 bits.

Mirrors QEMU hw/misc/debugexit.c:
* the write handler ignores the offset and uses the little-endian value of
  the access;
* valid access sizes are 1..4 bytes, naturally aligned (QEMU's
  memory_region_access_valid rejects other sizes and, since the ops do not
  set valid.unaligned, misaligned accesses); rejected writes are ignored;
* debug_exit_read returns 0, so reads return zero bytes.
"""

from __future__ import annotations

from typing import Callable, Optional

from .state import StateReader

VALID_WRITE_SIZES = (1, 2, 4)


class DebugExit:
    def __init__(self, on_exit: Callable[[int], None]) -> None:
        self._on_exit = on_exit
        self.exit_status: Optional[int] = None  # last status requested by the guest

    def save_state(self) -> dict:
        return {"exit_status": self.exit_status}

    def restore_state(self, state: dict) -> None:
        reader = StateReader(state, "debug-exit")
        status = reader.optional_integer("exit_status", 1, (1 << 33) - 1)
        reader.finish()
        if status is not None and not status & 1:
            raise reader.fail("exit_status", f"{status:#x} is not (v << 1) | 1")
        self.exit_status = status

    def read(self, offset: int, size: int) -> bytes:
        return bytes(size)

    def write(self, offset: int, data: bytes) -> None:
        size = len(data)
        if size not in VALID_WRITE_SIZES or offset % size:
            return
        status = (int.from_bytes(data, "little") << 1) | 1
        self.exit_status = status
        self._on_exit(status)
