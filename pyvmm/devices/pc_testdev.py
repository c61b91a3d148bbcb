"""QEMU's pc-testdev, the test device kvm-unit-tests drive on x86
(QEMU hw/misc/pc-testdev.c).

It is three device objects, registered separately where the platform's
address map puts them (pyvmm/arch/x86_64/layout.py):

* `ports`, PORTS_LENGTH (8) ports, at 0xe0 on a PC:
  - 0xe0-0xe3: a 32-bit scratch register; accesses of any size and offset
    read and write its bytes (QEMU's test_ioport ops, whose byte-lane
    masking makes it byte addressable);
  - 0xe4-0xe7: "flush page": a 32-bit write of a guest-physical address
    makes QEMU mprotect() the host page backing it to PROT_NONE and back, so
    KVM drops its mappings of that page and the guest's next access faults
    into the hypervisor again.  We call `flush_page(page_address)` if the
    VMM gave one, else the write is a no-op.  QEMU accepts only 4-byte
    accesses here; others are ignored.  The port is write-only (reads 0xff).
* `irq_lines`, IRQ_LINE_COUNT (24) ports, at 0x2000: writing a byte to 0x2000 + n sets
  interrupt line n to 1 if the byte is non-zero, else 0, through
  `set_irq(n, level)`.  Wider writes act byte by byte (QEMU splits them, its
  ops being 1-byte only).  Write-only (reads 0xff).  Deviation: QEMU asserts
  for lines 16-23 (isa_get_irq knows 16 ISA lines); we pass them on, since
  with an in-kernel IOAPIC they are valid GSIs.
* `iomem`, IOMEM_SIZE (64 KiB) of MMIO, at 0xff000000: plain scratch memory; reads of
  any size up to 8 return what was written (QEMU's test_iomem memcpy).

QEMU also mirrors the scratch register byte-wise at 0xe8-0xeb
(pc-testdev-ioport-byte).  That range overlaps debugcon at 0xe9, so it is
offered as the separate `byte_port` (BYTE_PORT_LENGTH ports, at 0xe8 in
QEMU) and pyvmm does not register it; a machine without debugcon could.
"""

from __future__ import annotations

import threading
from typing import Callable, Optional

from .state import StateReader, apply_runs, sparse_runs

PORTS_LENGTH = 8
SCRATCH_OFFSET = 0  # port 0xe0
SCRATCH_SIZE = 4
FLUSH_OFFSET = 4  # port 0xe4
BYTE_PORT_LENGTH = 4
IRQ_LINE_COUNT = 24
IOMEM_SIZE = 0x1_0000
PAGE_MASK = ~0xFFF


class PcTestDev:
    def __init__(
        self,
        set_irq: Callable[[int, bool], None],
        flush_page: Optional[Callable[[int], None]] = None,
    ) -> None:
        scratch = _Scratch()
        self.scratch = scratch
        self.ports = _TestPorts(scratch, flush_page)
        self.byte_port = scratch  # QEMU's byte-wise mirror at 0xe8
        self.irq_lines = _IrqLines(set_irq)
        self.iomem = _IoMem()

    def save_state(self) -> dict:
        """The scratch register, the interrupt lines it drives, the 64 KiB of
        MMIO scratch memory (its non-zero stretches) and the flush counter."""
        with self.scratch._lock, self.iomem._lock:
            return {"scratch": bytes(self.scratch._bytes).hex(), "irq_levels": list(self.irq_lines.levels),
                    "iomem": sparse_runs(self.iomem._memory), "flush_requests": self.ports.flush_requests}

    def restore_state(self, state: dict) -> None:
        reader = StateReader(state, "pc-testdev")
        scratch = reader.data("scratch", SCRATCH_SIZE, length=SCRATCH_SIZE)
        levels = reader.items("irq_levels", IRQ_LINE_COUNT)
        if len(levels) != IRQ_LINE_COUNT or not all(isinstance(level, bool) for level in levels):
            raise reader.fail("irq_levels", f"not {IRQ_LINE_COUNT} true/false values")
        memory = bytearray(IOMEM_SIZE)
        apply_runs(reader, "iomem", memory)
        flushes = reader.integer("flush_requests", 0, 1 << 64)
        reader.finish()
        with self.scratch._lock, self.iomem._lock:
            self.scratch._bytes[:] = scratch
            self.iomem._memory[:] = memory
        self.ports.flush_requests = flushes
        for line, level in enumerate(levels):
            if self.irq_lines.levels[line] != level:      # a line moves only if its level changes
                self.irq_lines.drive(line, level)


class _Scratch:
    """The 4-byte scratch register; as a device, the 0xe8 mirror."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._bytes = bytearray(SCRATCH_SIZE)

    @property
    def value(self) -> int:
        return int.from_bytes(self._bytes, "little")

    def read(self, offset: int, size: int) -> bytes:
        with self._lock:
            data = bytes(self._bytes[offset : offset + size])
        return data + b"\xff" * (size - len(data))

    def write(self, offset: int, data: bytes) -> None:
        with self._lock:
            end = min(offset + len(data), SCRATCH_SIZE)
            if offset < end:
                self._bytes[offset:end] = data[: end - offset]


class _TestPorts:
    """0xe0-0xe3 scratch register, 0xe4-0xe7 flush-page port."""

    def __init__(self, scratch: _Scratch, flush_page: Optional[Callable[[int], None]]) -> None:
        self._scratch = scratch
        self._flush_page = flush_page
        self.flush_requests = 0

    def read(self, offset: int, size: int) -> bytes:
        scratch_part = max(0, min(offset + size, FLUSH_OFFSET) - offset)
        data = self._scratch.read(offset, scratch_part) if scratch_part else b""
        return data + b"\xff" * (size - scratch_part)  # the flush port is write-only

    def write(self, offset: int, data: bytes) -> None:
        if offset < FLUSH_OFFSET:
            self._scratch.write(offset, data[: FLUSH_OFFSET - offset])
        elif offset == FLUSH_OFFSET and len(data) == 4:
            self.flush_requests += 1
            if self._flush_page is not None:
                self._flush_page(int.from_bytes(data, "little") & PAGE_MASK)


class _IrqLines:
    """One write-only byte port per interrupt line at 0x2000 + line."""

    def __init__(self, set_irq: Callable[[int, bool], None]) -> None:
        self._set_irq = set_irq
        self.levels = [False] * IRQ_LINE_COUNT

    def read(self, offset: int, size: int) -> bytes:
        return b"\xff" * size

    def write(self, offset: int, data: bytes) -> None:
        for line, value in enumerate(data, start=offset):
            if line < IRQ_LINE_COUNT:
                self.drive(line, value != 0)

    def drive(self, line: int, level: bool) -> None:
        self.levels[line] = level
        self._set_irq(line, level)


class _IoMem:
    """64 KiB of MMIO scratch memory."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._memory = bytearray(IOMEM_SIZE)

    def read(self, offset: int, size: int) -> bytes:
        with self._lock:
            data = bytes(self._memory[offset : offset + size])
        return data + b"\xff" * (size - len(data))

    def write(self, offset: int, data: bytes) -> None:
        with self._lock:
            end = min(offset + len(data), IOMEM_SIZE)
            if offset < end:
                self._memory[offset:end] = data[: end - offset]
