"""Virtio devices on the MMIO transport (virtio 1.2).

    spec      numbers from the specification
    queue     split virtqueues: chains, used ring, notification suppression
    device    VirtioDevice, the base of a device type
    mmio      MmioTransport (version 2 registers and state machine), EmptySlot
    rng       entropy device        console   console (one port)
    blk       block device          image     the block device's raw image file

Pure Python: nothing here knows KVM. A transport is a bus device with an
attach(context) (pyvmm.devices.context): guest memory, its interrupt line,
its worker thread and the RegisterState of its cached reads are all it
uses. Where the transports sit in a machine, and how a kernel finds them:
pyvmm.machine.virtio; the command-line options: pyvmm.virtio_options.
"""

from .device import VirtioDevice
from .mmio import EmptySlot, MmioTransport
from .queue import DescriptorChain, QueueError, SplitQueue

__all__ = ["DescriptorChain", "EmptySlot", "MmioTransport", "QueueError", "SplitQueue",
           "VirtioDevice"]
