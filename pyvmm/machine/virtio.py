"""A VM's virtio devices in the virtio-mmio slots, and how a kernel finds them.

VirtioSlots.open(config) opens what the devices need from the host (entropy
source, disk images with their locks, TAP devices) before anything else of
the VM exists, so a bad file is a usage error with nothing to undo.
attach(machine) then puts one transport per device in the slots from the
top down (console, entropy, the disks, then the network devices, each in
order), each with its interrupt, and
an EmptySlot in every other slot, through machine.add_mmio_device. A kernel
finds the devices through `kernel_cmdline()` (virtio_mmio.device=SIZE@ADDR:IRQ,
as QEMU's microvm appends for Linux) or the ACPI DSDT entries of
`acpi_devices()` (LNRO0005, for kernels that take no command-line devices).
"""

from __future__ import annotations

from typing import List, Optional, Tuple

from ..arch.x86_64 import layout
from ..config import ConfigError
from ..devices.virtio.blk import VirtioBlock, disk_ids
from ..devices.virtio.console import VirtioConsole
from ..devices.virtio.image import ImageError, RawImage
from ..devices.virtio.mmio import EmptySlot, MmioTransport
from ..devices.virtio.net import VirtioNet, net_ids, parse_mac
from ..devices.virtio.rng import EntropySource, VirtioRng
from ..devices.virtio.tap import Tap, TapError
from ..loader import LoadOptions, LoaderError, bzimage, detect
from ..virtio_options import to_plain


class VirtioSlots:
    """The devices a VmConfig asks for; placed from the top slot down."""

    def __init__(self) -> None:
        self.devices: List = []              # VirtioDevice, in slot order from the top
        self.ids: List[str] = []             # each device's name in counters (disk0, net0...)
        self.console: Optional[VirtioConsole] = None
        self.transports: List[MmioTransport] = []

    @classmethod
    def open(cls, config) -> "VirtioSlots":
        """Opens the host side of every configured device; ConfigError says what failed."""
        slots = cls()
        try:
            if config.console == "virtio":
                slots.console = VirtioConsole(None)
                slots._add("console", slots.console)
            if config.rng is not None:
                try:
                    source = EntropySource(config.rng.src)
                except OSError as error:
                    raise ConfigError(f"--rng: cannot read {config.rng.src}: "
                                      f"{error.strerror or error}") from None
                slots._add("rng", VirtioRng(source))
            for disk, disk_id in zip(config.disks, disk_ids(config.disks)):
                try:
                    image = RawImage(disk.path, disk.readonly)
                except ImageError as error:
                    raise ConfigError(f"--disk: {error}") from None
                limiter = disk.rate_limit.limiter() if disk.rate_limit else None
                slots._add(disk_id, VirtioBlock(image, disk_id, limiter))
            for net, net_id in zip(config.nets, net_ids(config.nets)):
                try:
                    tap = Tap.open(net.tap) if net.tap is not None else Tap.create()
                except TapError as error:
                    raise ConfigError(f"--net: {error}") from None
                slots._add(net_id, VirtioNet(tap, parse_mac(net.mac), net_id,
                                             net.rx.limiter() if net.rx else None,
                                             net.tx.limiter() if net.tx else None))
        except BaseException:
            slots.close()
            raise
        return slots

    def _add(self, name: str, device) -> None:
        self.ids.append(name)
        self.devices.append(device)

    def counters(self) -> dict:
        """{id: the device's counters} of the devices that keep some."""
        found = {}
        for name, device in zip(self.ids, self.devices):
            counters = device.counters()
            if counters is not None:
                found[name] = counters
        return found

    def plain_config(self, config) -> dict:
        """The devices of `config` as a snapshot's config.json holds them
        (imported here, by the thread that builds the machine: the API's
        thread, confined, may open no module file)."""
        return to_plain(config)

    def nets(self) -> List[VirtioNet]:
        return [device for device in self.devices if isinstance(device, VirtioNet)]

    def __bool__(self) -> bool:
        return bool(self.devices)

    def placements(self) -> List[Tuple[int, int, int, object]]:
        """(slot, base, irq, device) of each device, the first in the top slot."""
        placed = []
        for position, device in enumerate(self.devices):
            slot = layout.VIRTIO_MMIO_SLOTS - 1 - position
            base, irq = layout.virtio_slot(slot)
            placed.append((slot, base, irq, device))
        return placed

    def attach(self, machine, console_output=None) -> None:
        """Registers every slot on the machine's MMIO bus (nothing without
        devices); the console writes to `console_output` (write, flush), the
        UART's output."""
        if not self.devices:
            return
        if self.console is not None:
            self.console.output = console_output
        used = {}
        for slot, base, irq, device in self.placements():
            transport = MmioTransport(device)
            self.transports.append(transport)
            machine.add_mmio_device(base, layout.VIRTIO_MMIO_SLOT_SIZE, transport,
                                    name=f"{device.name} (slot {slot})", irq=irq)
            used[slot] = transport
        for slot in range(layout.VIRTIO_MMIO_SLOTS):
            if slot not in used:
                base, _irq = layout.virtio_slot(slot)
                machine.add_mmio_device(base, layout.VIRTIO_MMIO_SLOT_SIZE, EmptySlot(),
                                        name=f"virtio-mmio (slot {slot}, empty)")

    @property
    def console_input(self):
        """Where host input goes when the console is virtio (else None)."""
        return None if self.console is None else self.console.feed

    def boot_options(self, image: bytes, options: Optional[LoadOptions]) -> LoadOptions:
        """The load options to boot with: a Linux bzImage gets the devices
        appended to its command line, as QEMU's microvm does; other kernels
        keep theirs (a Linux booted through PVH finds the devices in the DSDT)."""
        options = options or LoadOptions()
        try:
            module = detect(image, options)
        except LoaderError:       # the loader reports a bad image itself, later
            return options
        if module is bzimage:
            options.cmdline = self.kernel_cmdline(options.cmdline)
        return options

    def kernel_cmdline(self, cmdline: str) -> str:
        """`cmdline` with a virtio_mmio.device=SIZE@ADDR:IRQ entry per device."""
        entries = [f"virtio_mmio.device={layout.VIRTIO_MMIO_SLOT_SIZE}@{base:#x}:{irq}"
                   for _slot, base, irq, _device in self.placements()]
        return " ".join(filter(None, [cmdline] + entries))

    def acpi_devices(self) -> List[Tuple[int, int, int, int]]:
        """(uid, base, size, irq) for the DSDT: one LNRO0005 device per slot in use."""
        return [(slot, base, layout.VIRTIO_MMIO_SLOT_SIZE, irq)
                for slot, base, irq, _device in self.placements()]

    def close(self) -> None:
        for device in self.devices:
            device.close()
        self.devices, self.ids = [], []
