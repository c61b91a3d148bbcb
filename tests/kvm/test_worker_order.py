"""A device's worker sees the guest's deferred register writes before it runs.

Under the fast path a posted write (a UART byte, a scratch-register write)
may wait in the deferred-write queue while the guest goes on and writes guest
memory. Work a device does on its worker thread must not see that memory
first: a virtio console printing a buffer the guest filled after printing a
line on the UART would otherwise print the two out of order."""

import threading
import time

from example_devices import Attached

from pyvmm import guests
from pyvmm.config import VmConfig
from pyvmm.devices.serial import SCR
from pyvmm.machine import Machine, read_kernel
from pyvmm.run.deferred import FROM_RING

COM1 = 0x3F8
SEEN_BY_WORKER = 0x5A
ROUNDS = 20


class Observer(Attached):
    """A device whose worker reads the UART's scratch register when asked."""

    def __init__(self, serial):
        self.serial = serial
        self.seen = []
        self.done = threading.Event()

    def look(self):
        self.seen.append(self.serial.save_state()["scr"])
        self.done.set()


def test_a_worker_callback_comes_after_the_writes_queued_before_it():
    config = VmConfig(kernel=guests.path("echo.bin"), serial="buffer", exit_path="fast", timeout=30)
    kernel, options = read_kernel(config)
    with Machine(config, kernel, options) as machine:
        observer = Observer(machine.serial)
        machine.add_port_device(0x560, 0x8, observer, name="observer")
        runner = threading.Thread(target=machine.run)
        runner.start()
        try:
            deadline = time.monotonic() + 10
            while machine.fast is None:
                assert time.monotonic() < deadline, "the run did not start"
                time.sleep(0.01)
            for value in range(SEEN_BY_WORKER, SEEN_BY_WORKER + ROUNDS):
                # as the guest's `out` to the scratch register, taken by KVM's ring
                machine.fast.deferred.append(COM1 + SCR, True, bytes([value]), source=FROM_RING)
                observer.done.clear()
                observer.context.worker.call(observer.look)
                assert observer.done.wait(5)
                assert observer.seen[-1] == value
        finally:
            machine.stop.request(0, "test-done")
            runner.join(30)
    assert not runner.is_alive()
