"""PCI configuration mechanism #1 with no PCI devices behind it.

Register it at 0xcf8, length 8: 0xcf8-0xcfb is the 32-bit CONFIG_ADDRESS
register, 0xcfc-0xcff the CONFIG_DATA window.  With nothing on the bus every
configuration read returns all-ones of its size (what a PCI master abort
returns, and what QEMU's pci_data_read gives for an absent device), and
configuration writes are dropped.  A kernel probing for PCI then finds
"no devices" rather than hanging or misreading.

CONFIG_ADDRESS follows QEMU hw/pci/pci_host.c: only a 32-bit write at 0xcf8
changes it, and it reads back exactly as written.  Narrower accesses to
0xcf8-0xcfb are taken byte by byte; a byte read returns the matching byte
of the register (QEMU returns the unshifted register for any offset, a quirk
we do not copy), a byte write is ignored.

Port 0xcf9 is also the chipset's reset control register (PIIX3 RCR / ICH9
RST_CNT), which QEMU lays over this range with a higher priority.  Our bus
cannot overlap ranges, so pass that register as `reset_control` (e.g.
`AcpiPm.reset_control`): single bytes at 0xcf9 are then forwarded to it,
exactly the accesses QEMU routes there.
"""

from __future__ import annotations

import threading
from typing import Any, Optional

from .state import StateReader

PCI_CONFIG_BASE = 0xCF8
PCI_CONFIG_LENGTH = 8
CONFIG_ADDRESS = 0  # offsets inside the range
CONFIG_DATA = 4
RESET_CONTROL_OFFSET = 1  # port 0xcf9


class PciConfigAbsent:
    def __init__(self, reset_control: Optional[Any] = None) -> None:
        self._reset_control = reset_control
        self._lock = threading.Lock()
        self._address = 0
        self.config_reads = 0
        self.config_writes = 0

    @property
    def config_address(self) -> int:
        return self._address

    def save_state(self) -> dict:
        """CONFIG_ADDRESS and the counters (0xcf9 belongs to the ACPI PM device's state)."""
        with self._lock:
            return {"address": self._address, "config_reads": self.config_reads,
                    "config_writes": self.config_writes}

    def restore_state(self, state: dict) -> None:
        reader = StateReader(state, "pci-config")
        address = reader.integer("address", 0, 0xFFFFFFFF)
        reads, writes = (reader.integer(name, 0, 1 << 64) for name in ("config_reads", "config_writes"))
        reader.finish()
        with self._lock:
            self._address, self.config_reads, self.config_writes = address, reads, writes

    def read(self, offset: int, size: int) -> bytes:
        if offset >= CONFIG_DATA:
            self.config_reads += 1
            return b"\xff" * size  # no device answers
        with self._lock:
            if offset == CONFIG_ADDRESS and size == 4:
                return self._address.to_bytes(4, "little")
            return bytes(self._read_byte(offset + i) for i in range(size))

    def write(self, offset: int, data: bytes) -> None:
        if offset >= CONFIG_DATA:
            self.config_writes += 1
            return
        with self._lock:
            if offset == CONFIG_ADDRESS and len(data) == 4:
                self._address = int.from_bytes(data, "little")
                return
            for i, value in enumerate(data):
                if offset + i == RESET_CONTROL_OFFSET and self._reset_control is not None:
                    self._reset_control.write(0, bytes((value,)))
                # Other narrow writes to CONFIG_ADDRESS (and to the data
                # window, for a straddling access) are ignored.

    def _read_byte(self, offset: int) -> int:
        if offset >= CONFIG_DATA:
            return 0xFF
        if offset == RESET_CONTROL_OFFSET and self._reset_control is not None:
            return self._reset_control.read(0, 1)[0]
        return (self._address >> (8 * offset)) & 0xFF

    def __repr__(self) -> str:
        return f"PciConfigAbsent(address={self._address:#010x})"
