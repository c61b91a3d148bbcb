"""virtio console (virtio 1.2, 5.3): one port, `hvc0` in Linux.

Queue 0 (receiveq) takes host input, queue 1 (transmitq) gives output.
Output goes to the same console output as the UART's (the host terminal or
file; pyvmm.console), in pieces of at most OUTPUT_CHUNK bytes. That output
never blocks and holds a bounded backlog; while the backlog is above
OUTPUT_HIGH_WATER the device leaves the driver's buffers in the queue and
looks again OUTPUT_RETRY seconds later, so a guest printing faster than the
terminal takes it waits for it, as on real hardware, and loses nothing.
The UART's output and this one keep the guest's order: the UART's queued
writes are delivered before the device's worker looks at a queue
(pyvmm/run/deferred.py). Input waits in a backlog of at most INPUT_BACKLOG
bytes until the driver posts receive buffers; what does not fit is dropped
and counted.

VIRTIO_CONSOLE_F_EMERG_WRITE is offered: a write of a non-zero value to
`emerg_wr` (configuration offset 8) prints its low byte at once, even
before the driver is set up, as QEMU's virtio-serial does.
"""

from __future__ import annotations

import struct
import threading

from . import spec
from .device import VirtioDevice
from .queue import DescriptorChain, SplitQueue

F_EMERG_WRITE = 2
RECEIVE, TRANSMIT = 0, 1
CONFIG = struct.Struct("<HHII")          # cols, rows, max_nr_ports, emerg_wr
EMERG_WR = 8
OUTPUT_CHUNK = 64 << 10
OUTPUT_HIGH_WATER = 256 << 10           # backlog bytes above which the driver waits
OUTPUT_RETRY = 0.01
INPUT_BACKLOG = 1 << 20


class VirtioConsole(VirtioDevice):
    device_id = spec.ID_CONSOLE
    queue_count = 2
    features = 1 << F_EMERG_WRITE
    name = "virtio-console"

    def __init__(self, output) -> None:
        """`output` has write(bytes) and flush(), and may have a `pending`
        backlog (a pyvmm.console output)."""
        super().__init__()
        self.output = output
        self._retry = None
        self._lock = threading.Lock()
        self._backlog = bytearray()
        self.input_bytes_dropped = 0
        self.bytes_out = 0

    def config(self) -> bytes:
        return CONFIG.pack(0, 0, 1, 0)

    def write_config(self, offset: int, data: bytes) -> None:
        field = bytearray(4)
        for position, byte in enumerate(data):
            if EMERG_WR <= offset + position < EMERG_WR + 4:
                field[offset + position - EMERG_WR] = byte
        if any(field):
            self._emit(bytes(field[:1]))

    # --- output --------------------------------------------------------------------
    def handle(self, queue_index: int, chain: DescriptorChain) -> int:
        if queue_index == TRANSMIT:
            for offset in range(0, chain.readable_length, OUTPUT_CHUNK):
                self._emit(chain.read(offset, OUTPUT_CHUNK))
        return 0

    def _emit(self, data: bytes) -> None:
        self.bytes_out += len(data)
        self.output.write(data)
        if len(data) >= OUTPUT_CHUNK:
            self.output.flush()

    def _backlogged(self) -> bool:
        """The output holds too much: flush what it takes now, and if that is
        not enough, come back later (the driver's buffers wait meanwhile)."""
        pending = getattr(self.output, "pending", None)
        if pending is None or len(pending) < OUTPUT_HIGH_WATER:
            return False
        self.output.flush()
        if len(pending) < OUTPUT_HIGH_WATER:
            return False
        if self._retry is None and self.transport is not None:
            self._retry = self.transport.context.worker.call_later(OUTPUT_RETRY, self._resume)
        return True

    def _resume(self) -> None:
        self._retry = None
        self.transport.serve(TRANSMIT)

    # --- input ----------------------------------------------------------------------
    def feed(self, data: bytes) -> None:
        """Host input for the guest (any thread)."""
        with self._lock:
            room = INPUT_BACKLOG - len(self._backlog)
            if len(data) > room:
                self.input_bytes_dropped += len(data) - room
                data = data[:room]
            self._backlog += data
        if data and self.transport is not None:
            self.transport.serve(RECEIVE)

    def pending_input(self) -> int:
        with self._lock:
            return len(self._backlog)

    def process(self, queue_index: int, queue: SplitQueue) -> bool:
        if queue_index == TRANSMIT:
            while not self._backlogged():
                chain = queue.pop()
                if chain is None:
                    return True
                queue.push(chain.head, self.handle(queue_index, chain))
            return False
        while True:
            with self._lock:
                if not self._backlog:
                    return False          # buffers wait for input
            chain = queue.pop()
            if chain is None:
                return True
            with self._lock:
                written = chain.write(bytes(self._backlog[:chain.writable_length]))
                del self._backlog[:written]
            queue.push(chain.head, written)

    def save_state(self) -> dict:
        """Host input the driver has not taken yet (its output is written out
        before a snapshot: pyvmm.console flushes it)."""
        with self._lock:
            return {"input": bytes(self._backlog).hex()}

    def restore_state(self, reader) -> None:
        data = reader.data("input", INPUT_BACKLOG)
        reader.finish()
        with self._lock:
            self._backlog[:] = data
        if self._retry is not None:                   # the transport serves the queues again
            self._retry.cancel()
            self._retry = None

    def counters(self) -> dict:
        return {"bytes_out": self.bytes_out, "input_bytes_dropped": self.input_bytes_dropped}

    def describe(self) -> str:
        return "console on the serial output"
