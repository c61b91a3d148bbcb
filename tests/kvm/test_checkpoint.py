"""In-process checkpoints (Machine.checkpoint / Machine.reset) against real
KVM: after a reset the machine is the checkpoint again (every byte of RAM,
every device, every vCPU register), whatever ran since and however it ended,
and from there it runs exactly as it did the first time; host writes are
undone too; a reset is never a new VM and leaks nothing."""

import json
import os
import struct
import threading

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pyvmm import guests
from pyvmm.config import VmConfig
from pyvmm.kvm.state import save_vcpu, save_vm
from pyvmm.machine import Machine, MachineStateError

SETTINGS = dict(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
TIMED_MSRS = {0x10, 0x6E0}


def flood_image(count):
    with open(guests.path("serial_flood.bin"), "rb") as f:
        image = bytearray(f.read())
    struct.pack_into("<I", image, 0x24, count)
    return bytes(image)


def ram(machine):
    return [bytes(region.view) for region in machine.memory.regions]


def everything(machine):
    """The machine's state, without what moves on its own (TSC, timers, clocks)."""
    vcpus = json.loads(json.dumps([save_vcpu(vcpu) for vcpu in machine.vcpus]))
    for vcpu in vcpus:
        vcpu["msrs"] = [pair for pair in vcpu["msrs"] if pair[0] not in TIMED_MSRS]
    vm = json.loads(json.dumps(save_vm(machine.vm)))
    vm.pop("clock")
    for channel in vm["pit"]["channels"]:
        channel.pop("count_load_time")
    devices = json.loads(json.dumps(machine.devices.save_state()))
    devices["acpi-pm"].pop("timer_ticks")
    devices["cmos"].pop("updated_second")
    return {"vcpus": vcpus, "vm": vm, "devices": devices}


@pytest.mark.parametrize("name, exit_path", [("compute.elf", "python"), ("compute.elf", "fast"),
                                             ("fuzz_target.elf", "python")])
@settings(**SETTINGS)
@given(first=st.floats(0.0005, 0.02), second=st.floats(0.0005, 0.05), scribble=st.binary(min_size=1, max_size=64))
def test_a_reset_makes_the_machine_its_checkpoint_again(name, exit_path, first, second, scribble):
    config = VmConfig(kernel=guests.path(name), serial="buffer", exit_path=exit_path)
    with Machine(config) as machine:
        machine.add_mmio_device(0xE0000000, 4, Park(machine), name="park")
        machine.run_until_pause(first)
        if machine.state != "paused":
            return                               # it ended before the first pause
        checkpoint = machine.checkpoint()
        memory, state, output = ram(machine), everything(machine), machine.serial_output
        result = machine.run_until_pause(second)  # runs on, pauses again or ends
        machine.memory.write(0x300000, scribble)  # and the host writes too
        machine.reset(checkpoint)
        assert ram(machine) == memory
        assert everything(machine) == state
        assert machine.serial_output == output
        assert machine.state == "paused" and not machine.stop.requested
        again = machine.run_until_pause(second * 4 if result.reason != "paused" else 30)
        if result.reason not in ("timeout",):
            assert (again.status, again.reason) == (result.status, result.reason)


class Park:
    """The snapshot-fuzzing park register, as a plain device."""

    def __init__(self, machine):
        self.machine, self.value = machine, None

    def read(self, offset, size):
        return bytes(size)

    def write(self, offset, data):
        self.value = int.from_bytes(data, "little")
        self.machine.request_pause()

    def save_state(self):
        return {"value": self.value}

    def restore_state(self, state):
        self.value = state["value"]


def test_a_run_that_ended_runs_on_from_the_checkpoint_as_the_first_time():
    config = VmConfig(kernel=guests.path("compute.elf"), serial="buffer")
    with Machine(config) as machine:
        assert machine.run_until_pause(0.001).reason in ("timeout", "debug-exit")
        if machine.state != "paused":
            pytest.skip("compute.elf ended within a millisecond")
        checkpoint = machine.checkpoint()
        before = machine.serial_output
        first = machine.run_until_pause(30)
        assert (first.status, first.reason) == (0x4B, "debug-exit")
        with pytest.raises(MachineStateError, match="reset"):
            machine.run_until_pause(1)
        outputs = []
        for _ in range(5):
            machine.reset(checkpoint)
            result = machine.run_until_pause(30)
            assert (result.status, result.reason) == (first.status, first.reason)
            outputs.append(machine.serial_output)
        assert outputs == [before + b"fnv1a=0xe3db629899874325 sum=2499500025000000\n"] * 5
        assert checkpoint.pages_restored >= 1                  # its stack at least


def test_a_reset_copies_back_only_the_pages_written():
    config = VmConfig(kernel=guests.path("fuzz_target.elf"), serial="buffer")
    with Machine(config) as machine:
        park = Park(machine)
        machine.add_mmio_device(0xE0000000, 4, park, name="park")
        assert machine.run_until_pause(10).reason == "paused"
        descriptor = park.value
        buffer = machine.memory.read_u64(descriptor)
        checkpoint = machine.checkpoint()
        machine.reset(checkpoint)
        assert checkpoint.pages_restored == 0
        machine.memory.write(0x400000, b"x" * 3 * 4096)         # three host pages
        machine.reset(checkpoint)
        assert checkpoint.pages_restored == 3
        assert machine.memory.read(0x400000, 3 * 4096) == bytes(3 * 4096)
        assert machine.run_until_pause(10).reason == "paused"   # an empty input: no call, no write
        machine.reset(checkpoint)
        assert checkpoint.pages_restored == 0
        machine.memory.write(buffer, b"\x01\x03abc")           # a record: the parser calls a handler
        machine.memory.write_u32(descriptor + 12, 5)
        assert machine.run_until_pause(10).reason == "paused"
        assert park.value == (0x811C9DC5 ^ 1) + sum(b"abc")
        machine.reset(checkpoint)
        assert checkpoint.pages_restored == 2                   # the input's page and the stack's
        assert machine.memory.read(buffer, 5) == bytes(5)


def test_reset_needs_a_stopped_machine_and_its_own_checkpoint():
    config = VmConfig(serial="null", raw_mode="protected", timeout=30)
    with Machine(config, flood_image(50_000_000), None) as machine, \
            Machine(VmConfig(kernel=guests.path("hello.bin"), serial="buffer")) as other:
        checkpoint = machine.checkpoint()                       # not started: fine
        with pytest.raises(ValueError, match="only the machine it was taken from"):
            other.reset(checkpoint)
        errors = []

        def attempt():
            while machine.serial.bytes_transmitted < 100:
                threading.Event().wait(0.005)
            for action in (lambda: machine.reset(checkpoint), machine.checkpoint):
                try:
                    action()
                except MachineStateError as error:
                    errors.append(str(error))
            assert machine.pause()
            machine.reset(checkpoint)                           # paused: fine
            machine.shutdown()
        worker = threading.Thread(target=attempt)
        worker.start()
        machine.run()
        worker.join()
        assert len(errors) == 2 and all("running" in error for error in errors)


def open_fds():
    return len(os.listdir("/proc/self/fd"))


def test_a_thousand_resets_leak_nothing_and_stay_one_vm():
    config = VmConfig(kernel=guests.path("fuzz_target.elf"), serial="buffer")
    with Machine(config) as machine:
        machine.add_mmio_device(0xE0000000, 4, Park(machine), name="park")
        machine.run_until_pause(10)
        checkpoint = machine.checkpoint()
        vm_fd, vcpu_fd = machine.vm.fd, machine.vcpus[0].fd
        machine.run_until_pause(10)
        machine.reset(checkpoint)
        fds, threads = open_fds(), threading.active_count()
        for _ in range(1000):
            assert machine.run_until_pause(10).reason == "paused"
            machine.reset(checkpoint)
        assert open_fds() == fds and threading.active_count() == threads
        assert (machine.vm.fd, machine.vcpus[0].fd) == (vm_fd, vcpu_fd)
        checkpoint.close()
