"""What a virtio device type (entropy, console, block...) gives its transport.

A device type only says what it is (ID, features, number of queues, config
space) and what a request does; the transport (pyvmm.devices.virtio.mmio)
does the rest: registers, status, feature negotiation, queue set-up,
notifications, interrupts and reset. Queue work runs on the device's worker
thread, never on a vCPU thread:

    class Zeroes(VirtioDevice):
        device_id = 0x1234
        queue_count = 1
        def handle(self, queue_index, chain):          # on the worker thread
            return chain.write(bytes(chain.writable_length))

`handle` returns how many bytes it wrote into the chain's writable buffers
(the used length). A device that must wait for something before it can use
a buffer (console input) overrides `process` instead.
"""

from __future__ import annotations

from typing import Optional

from .queue import DescriptorChain, SplitQueue


class VirtioDevice:
    """Base class of the device types; subclasses set the class attributes."""

    device_id = 0
    queue_count = 1
    features = 0              # device-specific feature bits offered to the driver
    name = "virtio"

    def __init__(self) -> None:
        self.transport = None     # set by bind(), before the guest runs

    def bind(self, transport) -> None:
        """The transport this device sits behind (transport.context is the
        device context: memory, irq, worker)."""
        self.transport = transport

    # --- configuration space --------------------------------------------------
    def config(self) -> bytes:
        """The device-specific configuration space, as the driver reads it."""
        return b""

    def write_config(self, offset: int, data: bytes) -> None:
        """A driver write into the configuration space; read-only by default."""

    # --- life cycle ---------------------------------------------------------------
    def accept_features(self, features: int) -> bool:
        """May refuse a combination of offered features (FEATURES_OK then stays clear)."""
        return True

    def activate(self) -> None:
        """The driver set DRIVER_OK (on the vCPU thread, under the transport's lock)."""

    def reset(self) -> None:
        """The driver reset the device (on the vCPU thread, under the transport's lock)."""

    def close(self) -> None:
        """The VM is gone: release files and such."""

    # --- requests (worker thread) -------------------------------------------
    def process(self, queue_index: int, queue: SplitQueue) -> bool:
        """Serves the chains available on a queue; True when it stopped
        because the queue was empty (the transport then re-enables
        notifications and looks again), False when the device has nothing
        more to do for now (the chains left wait for it)."""
        while True:
            chain = queue.pop()
            if chain is None:
                return True
            queue.push(chain.head, self.handle(queue_index, chain))

    def handle(self, queue_index: int, chain: DescriptorChain) -> int:
        """Serves one request; returns the bytes written into its writable buffers."""
        return 0

    # --- snapshots (the transport saves the registers and queues) ------------------
    def save_state(self) -> dict:
        """The device type's own state, as plain data (pyvmm/devices/state.py):
        taken while its worker is idle, and no chain is held popped between
        callbacks, so nothing is in flight."""
        return {}

    def restore_state(self, reader) -> None:
        """save_state()'s dict back through a StateReader: checks every field
        before it changes anything (DeviceStateError), and drops what the
        device had pending (timers, a waiting frame). Called while the
        worker is held, before the transport takes its registers back and,
        if the driver had set DRIVER_OK, calls activate()."""
        reader.finish()

    def counters(self) -> Optional[dict]:
        """{name: int} for --stats and the API (None: the device keeps none)."""
        return None

    def describe(self) -> Optional[str]:
        """One line for --stats and errors (e.g. the image path)."""
        return None
