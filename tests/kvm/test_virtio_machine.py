"""A VM with virtio devices: placed, discovered, driven, and gone without a trace when closed."""

import os
import threading

import pytest

from pyvmm import guests
from pyvmm.config import ConfigError, VmConfig
from pyvmm.devices.virtio.image import RawImage
from pyvmm.devices.virtio.mmio import EmptySlot, MmioTransport
from pyvmm.virtio_options import DiskSpec, RngSpec
from pyvmm.machine import Machine


def open_fds():
    return len(os.listdir("/proc/self/fd"))


def mapped_bytes():
    total = 0
    with open("/proc/self/maps") as maps:
        for line in maps:
            start, end = line.split()[0].split("-")
            total += int(end, 16) - int(start, 16)
    return total


@pytest.fixture
def disks(tmp_path):
    paths = []
    for name in ("a.img", "b.img"):
        path = tmp_path / name
        path.write_bytes(bytes(64 * 1024))
        paths.append(str(path))
    return paths


def config_with_everything(disks, kernel="virtio-rng.bin", **extra):
    return VmConfig(kernel=guests.path(kernel), serial="buffer", timeout=30, console="virtio",
                    rng=RngSpec(), disks=[DiskSpec(disks[0]), DiskSpec(disks[1], readonly=True)], **extra)


def test_every_device_in_its_slot_and_the_rng_guest_runs(disks):
    with Machine(config_with_everything(disks)) as machine:
        devices = {base: device for base, _, device in
                   ((b, n, machine.mmio_bus.device_at(b)) for b, n, _ in machine.mmio_bus.ranges())
                   if 0xFEB00000 <= base < 0xFEB03000}
        assert len(devices) == 24
        kinds = [type(devices[0xFEB02E00 - 0x200 * n].device).__name__ for n in range(4)]
        assert kinds == ["VirtioConsole", "VirtioRng", "VirtioBlock", "VirtioBlock"]
        assert sum(isinstance(d, EmptySlot) for d in devices.values()) == 20
        assert all(isinstance(devices[0xFEB02E00 - 0x200 * n], MmioTransport) for n in range(4))
        result = machine.run()
        output = machine.serial_output.decode()
    assert result.status == 1, output
    assert "slots: 4 devices, 20 empty (magic, version 2, id 0), 0 without a transport" in output
    assert "slot 22: entropy (id 4) version 2, in the dsdt" in output
    assert output.rstrip().endswith("rng done")


@pytest.mark.parametrize("exit_path", ["fast", "python"])
def test_closing_releases_fds_threads_and_image_locks(disks, exit_path):
    config = config_with_everything(disks, exit_path=exit_path)
    with Machine(config) as machine:        # warm-up: lazy imports, the kick handler
        machine.run()
    fds, threads, mapped = open_fds(), threading.active_count(), mapped_bytes()
    closed = []                                 # kept alive: closing alone must unmap their RAM
    for _ in range(5):
        with Machine(config) as machine:
            closed.append(machine)
            assert machine.run().status == 1
            with pytest.raises(Exception, match="in use"):
                RawImage(disks[0])
    assert open_fds() == fds
    assert threading.active_count() == threads
    # Each VM maps 128 MiB of RAM; the queues' views of it must not keep any mapped.
    assert mapped_bytes() - mapped < config.memory
    RawImage(disks[0]).close()
    RawImage(disks[1]).close()


def test_a_machine_that_fails_to_build_leaves_no_lock(disks):
    fds = open_fds()
    config = config_with_everything(disks)
    for _ in range(5):
        with pytest.raises(ValueError):
            Machine(config, image=b"not a kernel", options=None)
    assert open_fds() == fds
    RawImage(disks[0]).close()


def test_a_locked_image_stops_the_build_before_memory(disks):
    held = RawImage(disks[0])
    try:
        with pytest.raises(ConfigError, match="in use by another VM"):
            Machine(config_with_everything(disks))
    finally:
        held.close()
