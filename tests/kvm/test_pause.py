"""Pausing a running machine: every vCPU stops at an exit boundary, nothing
runs while it is paused, and it goes on where it stopped."""

import struct
import threading
import time

import pytest

from pyvmm import guests
from pyvmm.config import VmConfig
from pyvmm.machine import Machine


def flood(count):
    with open(guests.path("serial_flood.bin"), "rb") as f:
        image = bytearray(f.read())
    struct.pack_into("<I", image, 0x24, count)
    return bytes(image)


@pytest.mark.parametrize("exit_path, cpus", [("python", 1), ("fast", 1), ("fast", 2)])
def test_pause_stops_every_vcpu_and_resume_goes_on(exit_path, cpus):
    config = VmConfig(serial="buffer", raw_mode="protected", exit_path=exit_path, cpus=cpus, timeout=60)
    with Machine(config, flood(2_000_000), None) as machine:
        outcome = {}
        runner = threading.Thread(target=lambda: outcome.update(result=machine.run()))
        runner.start()
        while machine.serial.bytes_transmitted < 2000:
            time.sleep(0.01)
        assert machine.pause()
        sent, exits = machine.serial.bytes_transmitted, machine.exit_stats().total
        time.sleep(0.3)
        assert machine.serial.bytes_transmitted == sent
        assert machine.exit_stats().total == exits
        machine.resume()
        deadline = time.monotonic() + 10
        while machine.serial.bytes_transmitted <= sent + 1000:
            assert time.monotonic() < deadline, "the guest did not go on after resume"
            time.sleep(0.01)
        machine.stop.request(0, "test-done")
        runner.join(30)
        assert not runner.is_alive()
    assert outcome["result"].reason == "test-done"


def test_a_paused_machine_still_times_out_and_ends():
    config = VmConfig(serial="null", raw_mode="protected", timeout=1.0)
    with Machine(config, flood(2_000_000), None) as machine:
        outcome = {}
        runner = threading.Thread(target=lambda: outcome.update(result=machine.run()))
        runner.start()
        time.sleep(0.2)
        assert machine.pause()
        runner.join(10)
        assert not runner.is_alive()
    assert (outcome["result"].status, outcome["result"].reason) == (124, "timeout")


def test_a_pause_asked_at_the_first_exit_waits_for_every_vcpu_thread():
    """A vCPU whose thread has not started yet is not parked: wait_paused()
    must wait for it, not count it as ended."""
    for _attempt in range(5):
        config = VmConfig(kernel=guests.path("smp.bin"), serial="buffer", cpus=4, timeout=30)
        with Machine(config) as machine:
            asked, seen = threading.Event(), {}

            def pause_at_the_first_exit(event):
                if not asked.is_set():
                    machine.request_pause()
                    asked.set()

            def look():
                asked.wait(30)
                seen["paused"] = machine.wait_paused(30)
                seen["parked"] = machine.info()["vcpus"]
                machine.shutdown()
            looker = threading.Thread(target=look)
            looker.start()
            machine.add_hook(pause_at_the_first_exit)
            result = machine.run()
            asked.set()
            looker.join(30)
        assert result.reason == "shutdown"
        assert seen["paused"] and all(vcpu["parked"] for vcpu in seen["parked"]), seen
