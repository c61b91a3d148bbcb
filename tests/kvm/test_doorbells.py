"""Doorbells (pyvmm.run.doorbells): device writes taken by a KVM ioeventfd under the
fast path and delivered on the device's own worker thread. The device must see
the same accesses, in the same order, as under the Python loop, with the
doorbell writes no longer exiting."""

import struct
import threading

import pytest
from example_devices import Recorder

from pyvmm import guests
from pyvmm.config import VmConfig
from pyvmm.devices import BusError
from pyvmm.machine import Machine, read_kernel

RECORDER_ANSWERS = {0x1: 0xA1, 0x2: 0xB2B1, 0x4: 0xC4C3C2C1, 0xD: 0x7E, 0xF: 2}


class BellRecorder(Recorder):
    """exits.bin's test device, with doorbells; thread-safe, as the contract asks."""

    def __init__(self, doorbells, posted_writes=()):
        super().__init__(RECORDER_ANSWERS)
        self.doorbells = doorbells
        self.posted_writes = posted_writes
        self.lock = threading.Lock()
        self.threads = set()

    def read(self, offset, size):
        with self.lock:
            return super().read(offset, size)

    def write(self, offset, data):
        with self.lock:
            self.threads.add(threading.current_thread().name)
            super().write(offset, data)


class Exploding(BellRecorder):
    def write(self, offset, data):
        raise RuntimeError("device bug")


def run(name, exit_path, device, base, image=None, mmio=False):
    config = VmConfig(kernel=guests.path(name), serial="buffer", timeout=30, exit_path=exit_path)
    kernel, options = read_kernel(config)
    with Machine(config, image or kernel, options) as machine:
        if mmio:
            machine.add_mmio_device(base, 0x1000, device)
        else:
            machine.add_port_device(base, 0x10, device)
        if name == "exits.bin":
            machine.add_mmio_device(0xD0000000, 0x1000, Recorder({0x10: 0xD4D3D2D1, 0x20: 0xE1}))
        result = machine.run()
        return result, machine.stats


# exits.bin writes 0x11 (1 byte), 0x2233 (2) and 0x44556677 (4) to 0x500, then reads 0x501.
@pytest.mark.parametrize("doorbells, rang", [
    (((0, 1, 0x11),), 1),
    (((0, 4, 0x44556677),), 1),
    (((0, 1, 0x11), (0, 2, 0x2233), (0, 4, 0x44556677)), 3),
    (((0, 1, 0x12),), 0),                       # another value: the write exits as usual
])
def test_doorbell_writes_reach_the_device_in_order_without_exits(doorbells, rang):
    python_device, fast_device = BellRecorder(doorbells), BellRecorder(doorbells)
    python_result, python_stats = run("exits.bin", "python", python_device, 0x500)
    fast_result, fast_stats = run("exits.bin", "fast", fast_device, 0x500)
    assert fast_result.status == python_result.status and fast_result.reason == python_result.reason
    assert fast_device.log == python_device.log
    assert fast_device.log[:3] == [("write", 0, b"\x11"), ("write", 0, b"\x33\x22"),
                                   ("write", 0, b"\x77\x66\x55\x44")]
    assert fast_stats.by_port() == python_stats.by_port()
    assert fast_stats.by_reason()["io"] == python_stats.by_reason()["io"] - rang
    assert (fast_stats.doorbells, fast_stats.coalesced) == (rang, 0)


def test_a_device_with_posted_writes_and_doorbells_is_refused():
    device = BellRecorder(((0, 1, 0x11),), posted_writes=((0xC, 1),))
    config = VmConfig(kernel=guests.path("exits.bin"), serial="buffer", timeout=30)
    with Machine(config) as machine:
        with pytest.raises(BusError, match="both posted_writes and doorbells"):
            machine.add_port_device(0x500, 0x10, device)


def bench_image(count):
    with open(guests.path("bench_exit.bin"), "rb") as f:
        image = bytearray(f.read())
    struct.pack_into("<I", image, 0x24, count)
    return bytes(image)


def test_many_rings_are_all_delivered():
    # bench_exit.bin writes N zero bytes to 0x560, then exits through 0xf4.
    count = 3000
    device = BellRecorder(((0, 1, 0),))
    result, stats = run("bench_exit.bin", "fast", device, 0x560, image=bench_image(count))
    assert result.reason == "debug-exit"
    assert device.log == [("write", 0, b"\x00")] * count
    assert stats.by_port()[(0x560, "out")] == count and stats.doorbells == count
    assert stats.by_reason()["io"] < 10
    # delivered by its worker, a vCPU before an access, or the machine at the end
    assert device.threads <= {"pyvmm-dev-BellRecorder", "pyvmm-vcpu0", "MainThread"}


def test_a_device_failing_on_its_worker_ends_the_run_naming_it():
    # Enough rings that the guest is still ringing when the worker delivers
    # (doorbells carry no order against other devices' accesses).
    result, _ = run("bench_exit.bin", "fast", Exploding(((0, 1, 0),)), 0x560, image=bench_image(10_000_000))
    assert (result.status, result.reason) == (125, "device-failure")
    assert result.message == ("device 'Exploding' failed on a 1-byte queued write at port 0x560: "
                              "RuntimeError: device bug")


def test_the_worker_threads_and_eventfds_end_with_the_machine():
    import os
    before_fds = len(os.listdir("/proc/self/fd"))
    for _ in range(20):
        run("bench_exit.bin", "fast", BellRecorder(((0, 1, 0),)), 0x560, image=bench_image(10))
    assert not [t for t in threading.enumerate() if t.name.startswith("pyvmm-")]
    assert len(os.listdir("/proc/self/fd")) == before_fds


def test_a_device_failing_on_a_write_delivered_at_the_end_is_still_reported():
    config = VmConfig(kernel=guests.path("bench_exit.bin"), serial="buffer", timeout=30)
    with Machine(config, bench_image(50), read_kernel(config)[1]) as machine:
        machine.add_port_device(0x560, 0x10, Exploding(((0, 1, 0),)))
        result = machine.run()
        late = machine.late_device_failures
    if result.reason == "debug-exit":       # the guest ended it before the worker delivered
        assert late == ["device 'Exploding' failed on a 1-byte queued write at port 0x560: "
                        "RuntimeError: device bug"]
    else:
        assert result.reason == "device-failure" and late == []


class FailingConsole:
    """A posted-write device whose write raises: reached only through the ring."""

    posted_writes = ((0, 1),)

    def read(self, offset, size):
        return bytes(size)

    def write(self, offset, data):
        raise RuntimeError("posted write bug")


def test_a_device_failing_on_a_posted_write_ends_the_run_cleanly():
    # bench_exit.bin's writes to 0x560 land in the ring; the first drain calls the device.
    result, _ = run("bench_exit.bin", "fast", FailingConsole(), 0x560, image=bench_image(50))
    assert (result.status, result.reason) == (125, "device-failure")
    assert result.message == ("device 'FailingConsole' failed on a 1-byte queued write at port 0x560: "
                              "RuntimeError: posted write bug")
