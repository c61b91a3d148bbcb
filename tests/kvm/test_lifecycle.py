"""Closing a VM releases every fd, mapping and thread."""

import os
import threading

import pytest

from pyvmm import guests
from pyvmm.config import VmConfig
from pyvmm.kvm import Kvm, KvmError
from pyvmm.machine import InputFileError, Machine


def open_fds():
    return len(os.listdir("/proc/self/fd"))


def mapped_bytes():
    total = 0
    with open("/proc/self/maps") as maps:
        for line in maps:
            start, end = line.split()[0].split("-")
            total += int(end, 16) - int(start, 16)
    return total


def test_a_thousand_vms_in_a_row_leak_nothing():
    config = VmConfig(kernel=guests.path("hello.bin"), raw_mode="protected", serial="buffer")
    with Machine(config) as machine:     # warm-up: lazy imports, the kick handler
        machine.run()
    fds, mapped, threads = open_fds(), mapped_bytes(), threading.active_count()
    for _ in range(1000):
        with Machine(config) as machine:
            assert machine.run().status == 0
    assert open_fds() == fds
    assert threading.active_count() == threads
    # Each VM maps 128 MiB of RAM and a kvm_run page; thread stacks and
    # allocator arenas may be cached, but no VM's memory may stay mapped.
    assert mapped_bytes() - mapped < config.memory


def test_a_thousand_bare_vms_with_vcpus_leak_no_fds():
    fds = open_fds()
    with Kvm() as kvm:
        for _ in range(1000):
            with kvm.create_vm() as vm:
                vm.create_vcpu(0)
    assert open_fds() == fds


def test_machine_that_fails_to_build_releases_everything(tmp_path):
    # The serial output is opened after the VM and its vCPUs exist: a file in
    # a directory that is not there makes the build fail at that point.
    config = VmConfig(kernel=guests.path("hello.bin"), raw_mode="protected",
                      serial=f"file:{tmp_path}/missing/console.txt", cpus=2)
    with pytest.raises(InputFileError, match="cannot write serial output"):
        Machine(config)                 # warm-up: lazy imports
    fds, mapped, threads = open_fds(), mapped_bytes(), threading.active_count()
    for _ in range(50):
        with pytest.raises(InputFileError):
            Machine(config)
    assert open_fds() == fds
    assert threading.active_count() == threads
    assert mapped_bytes() - mapped < config.memory


def test_failed_ioctl_names_the_call_and_the_error():
    with Kvm() as kvm, kvm.create_vm() as vm:
        vm.create_vcpu(0)
        try:
            vm.create_vcpu(0)
        except KvmError as error:
            assert error.ioctl == "KVM_CREATE_VCPU"
            assert "KVM_CREATE_VCPU failed: File exists" in str(error)
        else:
            raise AssertionError("creating vCPU 0 twice must fail")


def test_stdin_pump_thread_ends_with_the_run():
    read_end, write_end = os.pipe()
    try:
        threads = threading.active_count()
        config = VmConfig(kernel=guests.path("hello.bin"), raw_mode="protected", serial="buffer")
        with Machine(config) as machine:
            machine.run(stdin_fd=read_end)
        assert threading.active_count() == threads
    finally:
        os.close(read_end)
        os.close(write_end)
