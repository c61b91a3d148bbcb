"""QEMU's firmware configuration device (fw_cfg), I/O-port interface.

Register it at 0x510, length 2.  Follows QEMU hw/nvram/fw_cfg.c
(fw_cfg_comb_mem_ops) and docs/specs/fw_cfg.rst:

* A 16-bit little-endian write at 0x510 selects an item and rewinds it.
* Each 1-byte read, at 0x511 (or at 0x510: QEMU's combined port reads data
  on both), returns the next byte of the item; past the end, and for keys
  with no item, it returns 0.
* Other accesses are invalid in QEMU and do nothing: 1-byte writes are
  ignored (write support was removed in QEMU 2.4), a 16-bit read returns 0
  and does not advance.
* After reset the signature item (key 0) is selected, as QEMU's fw_cfg_reset.
* No DMA interface: the ID item is 1 ("traditional interface"), so guests
  never look for the DMA address register at 0x514.

Items: signature "QEMU" (0x00), ID (0x01, u32), RAM size (0x03, u64, all of
guest RAM), boot CPU count (0x05, u16), maximum CPU count (0x0f, u16), the
kernel command line as QEMU's -append provides it (0x14: u32 length
including the NUL, 0x15: the bytes and the NUL), and the file directory
(0x19: big-endian u32 count, then per file a big-endian u32 size, u16 key,
u16 reserved and a 56-byte NUL-padded name).  Files get keys from 0x20 on in
name order, as QEMU sorts them for current machine types.

Deviations: the directory lists only the files present (QEMU's item is
sized for all its slots, the unused ones zero); it exists, with count 0,
even when there are no files.  Arch-specific keys (bit 15) and QEMU's other
items (UUID, NUMA, e820, ACPI tables ...) are absent and read as zeros.
"""

from __future__ import annotations

import struct
import threading
from typing import Mapping, Optional, Union

from .state import StateReader

FW_CFG_LENGTH = 2
SELECTOR_OFFSET = 0  # port 0x510 on a PC
DATA_OFFSET = 1  # port 0x511

KEY_SIGNATURE = 0x0000
KEY_ID = 0x0001
KEY_RAM_SIZE = 0x0003
KEY_NB_CPUS = 0x0005
KEY_MAX_CPUS = 0x000F
KEY_CMDLINE_SIZE = 0x0014
KEY_CMDLINE_DATA = 0x0015
KEY_FILE_DIR = 0x0019
KEY_FILE_FIRST = 0x0020
KEY_WRITE_CHANNEL = 0x4000
KEY_ARCH_LOCAL = 0x8000
KEY_ENTRY_MASK = 0x3FFF

SIGNATURE = b"QEMU"
ID_TRADITIONAL = 0x01  # bit 1 (DMA) is never offered
FILE_NAME_SIZE = 56  # including the terminating NUL
MAX_FILES = KEY_ENTRY_MASK - KEY_FILE_FIRST + 1

Text = Union[str, bytes]


class FwCfg:
    def __init__(
        self,
        ram_size: int,
        cpus: int,
        cmdline: Optional[Text],
        files: Optional[Mapping[Text, bytes]] = None,
        max_cpus: Optional[int] = None,
    ) -> None:
        if max_cpus is None:
            max_cpus = cpus
        if not 0 <= ram_size < 1 << 64 or not 1 <= cpus <= max_cpus <= 0xFFFF:
            raise ValueError(f"fw_cfg: bad configuration ram_size={ram_size}, cpus={cpus}, max_cpus={max_cpus}")
        self._items: dict[int, bytes] = {
            KEY_SIGNATURE: SIGNATURE,
            KEY_ID: struct.pack("<I", ID_TRADITIONAL),
            KEY_RAM_SIZE: struct.pack("<Q", ram_size),
            KEY_NB_CPUS: struct.pack("<H", cpus),
            KEY_MAX_CPUS: struct.pack("<H", max_cpus),
        }
        if cmdline is not None:
            text = _as_bytes(cmdline, "command line")
            if b"\0" in text:
                raise ValueError("fw_cfg: the command line contains a NUL byte")
            self._items[KEY_CMDLINE_SIZE] = struct.pack("<I", len(text) + 1)
            self._items[KEY_CMDLINE_DATA] = text + b"\0"
        self._file_keys: dict[bytes, int] = {}
        self._add_files(files or {})
        self._lock = threading.Lock()
        self._current: Optional[bytes] = self._items[KEY_SIGNATURE]
        self._selected = KEY_SIGNATURE
        self._offset = 0

    def _add_files(self, files: Mapping[Text, bytes]) -> None:
        named = sorted((_as_bytes(name, "file name"), bytes(data)) for name, data in files.items())
        if len(named) > MAX_FILES:
            raise ValueError(f"fw_cfg: {len(named)} files, at most {MAX_FILES} fit")
        directory = [struct.pack(">I", len(named))]
        for index, (name, data) in enumerate(named):
            if not name or b"\0" in name or len(name) >= FILE_NAME_SIZE:
                raise ValueError(f"fw_cfg: bad file name {name!r} (1-{FILE_NAME_SIZE - 1} bytes, no NUL)")
            if name in self._file_keys:
                raise ValueError(f"fw_cfg: duplicate file name {name!r}")
            if len(data) >= 1 << 32:
                raise ValueError(f"fw_cfg: file {name!r} is too large")
            key = KEY_FILE_FIRST + index
            self._file_keys[name] = key
            self._items[key] = data
            directory.append(struct.pack(">IHH", len(data), key, 0) + name.ljust(FILE_NAME_SIZE, b"\0"))
        self._items[KEY_FILE_DIR] = b"".join(directory)

    # ------------------------------------------------------------ host side

    def item(self, key: int) -> bytes:
        """The contents of an item as the guest reads it (b"" when absent)."""
        return self._items.get(key, b"")

    def file_key(self, name: Text) -> int:
        """The selector key of a file (KeyError if there is no such file)."""
        return self._file_keys[_as_bytes(name, "file name")]

    @property
    def selected_key(self) -> int:
        return self._selected

    # ------------------------------------------------------- device contract

    def read(self, offset: int, size: int) -> bytes:
        if size != 1:
            return bytes(size)  # QEMU accepts only byte reads
        with self._lock:
            item, position = self._current, self._offset
            if item is None or position >= len(item):
                return b"\0"
            self._offset = position + 1
            return item[position : position + 1]

    def write(self, offset: int, data: bytes) -> None:
        if offset != SELECTOR_OFFSET or len(data) != 2:
            return  # byte writes do nothing in QEMU; nothing else is valid
        self._select(int.from_bytes(data, "little"))

    def _select(self, key: int) -> None:
        with self._lock:
            self._selected = key
            self._offset = 0
            # The write-channel bit only mattered for the removed write support.
            self._current = None if key & KEY_ARCH_LOCAL else self._items.get(key & KEY_ENTRY_MASK)

    # ------------------------------------------------------------ state

    def save_state(self) -> dict:
        """The selected item and how far it was read (the items come from the
        machine's configuration)."""
        with self._lock:
            return {"selected": self._selected, "offset": self._offset}

    def restore_state(self, state: dict) -> None:
        reader = StateReader(state, "fw_cfg")
        selected = reader.integer("selected", 0, 0xFFFF)
        offset = reader.integer("offset", 0, 1 << 32)
        reader.finish()
        self._select(selected)
        with self._lock:
            self._offset = offset

    def __repr__(self) -> str:
        return f"FwCfg(items={len(self._items)}, files={len(self._file_keys)}, selected={self._selected:#06x})"


def _as_bytes(value: Text, what: str) -> bytes:
    # As the loaders encode a command line: UTF-8, with bytes that came
    # undecodable from argv (PEP 383) passed through unchanged.
    if isinstance(value, str):
        try:
            return value.encode("utf-8", "surrogateescape")
        except UnicodeEncodeError:
            raise ValueError(f"fw_cfg: {what} {value!r} cannot be encoded") from None
    return bytes(value)
