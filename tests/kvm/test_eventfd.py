"""irqfd and ioeventfd: KVM raises an interrupt or records a guest write through
an eventfd, with no ioctl and no vCPU exit; closing deassigns, and the VM
closes what it still owns."""

import errno
import os
import struct
import threading
import time

import pytest
from example_devices import Attached

from pyvmm import guests
from pyvmm._kvm import ffi
from pyvmm.config import VmConfig
from pyvmm.kvm import Kvm, KvmError
from pyvmm.kvm._ioctl import ioctl
from pyvmm.kvm.eventfd import EventFd
from pyvmm.machine import Machine, read_kernel

BENCH_PORT, DEBUG_EXIT_PORT = 0x560, 0xF4
BENCH_BYTE = 0x00               # bench_exit.bin writes AL = 0
WRITES = 500
COM1_GSI = 4                    # irqecho.bin unmasks only IRQ 4


def open_fds():
    return len(os.listdir("/proc/self/fd"))


def bench_machine(exit_path):
    """bench_exit.bin patched to WRITES one-byte OUTs to BENCH_PORT, not yet run."""
    config = VmConfig(kernel=guests.path("bench_exit.bin"), serial="buffer", timeout=30)
    kernel, options = read_kernel(config)
    image = bytearray(kernel)
    struct.pack_into("<I", image, 0x24, WRITES)
    machine = Machine(config, bytes(image), options)
    machine.config.exit_path = exit_path
    return machine


def bench_port_exits(machine):
    return machine.stats.by_port().get((BENCH_PORT, "out"), 0)


# --- EventFd alone ---------------------------------------------------------------

def test_eventfd_take_returns_the_count_since_the_last_take():
    with EventFd() as event:
        assert event.take() == 0
        event.signal()
        event.signal(4)
        assert event.take() == 5
        assert event.take() == 0
    assert event.closed


def test_eventfd_close_is_idempotent():
    fds = open_fds()
    event = EventFd()
    assert open_fds() == fds + 1 and not event.closed
    event.close()
    event.close()
    assert open_fds() == fds and event.fileno() == -1


# --- ioeventfd -------------------------------------------------------------------

@pytest.mark.parametrize("exit_path", ["python", "fast"])
def test_ioeventfd_counts_port_writes_that_no_longer_exit(exit_path):
    with bench_machine(exit_path) as machine:
        writes = machine.vm.ioeventfd(BENCH_PORT, 1)
        result = machine.run()
        assert (result.status, result.reason) == (1, "debug-exit")
        assert writes.take() == WRITES
        assert machine.stats.by_port() == {(DEBUG_EXIT_PORT, "out"): 1}


@pytest.mark.parametrize("exit_path", ["python", "fast"])
@pytest.mark.parametrize("datamatch, exits, counted", [
    (BENCH_BYTE ^ 0xAA, WRITES, 0),       # another value: every write still exits
    (BENCH_BYTE, 0, WRITES),
])
def test_ioeventfd_datamatch_picks_the_writes_it_counts(exit_path, datamatch, exits, counted):
    with bench_machine(exit_path) as machine:
        writes = machine.vm.ioeventfd(BENCH_PORT, 1, datamatch=datamatch)
        assert machine.run().reason == "debug-exit"
        assert writes.take() == counted
        assert bench_port_exits(machine) == exits


def test_closed_ioeventfd_is_deassigned():
    with bench_machine("python") as machine:
        writes = machine.vm.ioeventfd(BENCH_PORT, 1)
        # A second reference keeps the eventfd alive, so only the deassign
        # can stop KVM from counting into it.
        still_open = os.dup(writes.fileno())
        try:
            writes.close()
            assert machine.vm.eventfds == ()
            assert machine.run().reason == "debug-exit"
            assert bench_port_exits(machine) == WRITES
            with pytest.raises(BlockingIOError):
                os.eventfd_read(still_open)
        finally:
            os.close(still_open)


def test_ioeventfd_already_registered_is_refused_without_a_leak():
    with Kvm() as kvm, kvm.create_vm() as vm:
        vm.ioeventfd(BENCH_PORT, 1)
        fds = open_fds()
        with pytest.raises(KvmError) as refused:
            vm.ioeventfd(BENCH_PORT, 1)
        assert refused.value.errno == errno.EEXIST and refused.value.ioctl == "KVM_IOEVENTFD"
        assert open_fds() == fds and len(vm.eventfds) == 1


# --- irqfd -----------------------------------------------------------------------

def run_irqecho(exit_path, deassign_before_signal):
    """irqecho.bin with an EOT stashed before boot: it sleeps in `sti; hlt` until
    the first IRQ 4, whose handler finds the EOT and ends the run. Only the
    irqfd raises that interrupt, from another thread once the guest is ready."""
    config = VmConfig(kernel=guests.path("irqecho.bin"), serial="buffer", timeout=2)
    with Machine(config) as machine:
        machine.config.exit_path = exit_path
        machine.serial.feed(b"\x04")          # read by uart_init: no UART interrupt follows
        irq = machine.vm.irqfd(COM1_GSI)
        writer = os.dup(irq.fileno())         # the same eventfd, open after irq.close()
        if deassign_before_signal:
            irq.close()

        def signal_when_ready():
            deadline = time.monotonic() + config.timeout
            while b"ready\n" not in machine.serial_output and time.monotonic() < deadline:
                time.sleep(0.005)
            os.eventfd_write(writer, 1)

        signaller = threading.Thread(target=signal_when_ready)
        signaller.start()
        try:
            result = machine.run()
        finally:
            signaller.join()
            os.close(writer)
        return result, machine.serial_output


@pytest.mark.parametrize("exit_path", ["python", "fast"])
def test_irqfd_signal_interrupts_the_guest(exit_path):
    result, output = run_irqecho(exit_path, deassign_before_signal=False)
    assert (result.status, result.reason) == (1, "debug-exit")
    assert output == b"irqecho ready\n\nbye\n"


def test_closed_irqfd_is_deassigned():
    result, output = run_irqecho("python", deassign_before_signal=True)
    assert result.reason == "timeout"
    assert output == b"irqecho ready\n"


def test_irqfd_counter_is_drained_by_kvm_while_assigned():
    with Kvm() as kvm, kvm.create_vm() as vm:
        vm.create_irqchip()
        irq = vm.irqfd(COM1_GSI)
        irq.signal()
        assert irq.take() == 0
        irq.close()
        irq.close()
        assert vm.eventfds == ()


def irqfd_request(fd, gsi):
    return ffi.new("struct kvm_irqfd *", {"fd": fd, "gsi": gsi})


@pytest.mark.parametrize("second_gsi", [COM1_GSI, COM1_GSI + 1])
def test_an_eventfd_assigned_twice_is_busy(second_gsi):
    with Kvm() as kvm, kvm.create_vm() as vm:
        vm.create_irqchip()
        irq = vm.irqfd(COM1_GSI)
        with pytest.raises(KvmError) as refused:
            ioctl(vm.fd, "KVM_IRQFD", irqfd_request(irq.fileno(), second_gsi))
        assert refused.value.errno == errno.EBUSY


def test_irqfd_without_an_irqchip_is_refused_without_a_leak():
    with Kvm() as kvm, kvm.create_vm() as vm:
        fds = open_fds()
        with pytest.raises(KvmError) as refused:
            vm.irqfd(COM1_GSI)
        assert refused.value.errno == errno.EINVAL and refused.value.ioctl == "KVM_IRQFD"
        assert open_fds() == fds and vm.eventfds == ()


# --- arguments and lifetime ------------------------------------------------------------

@pytest.mark.parametrize("make", [
    lambda vm: vm.irqfd(-1),
    lambda vm: vm.irqfd(1024),                  # KVM itself would accept it
    lambda vm: vm.ioeventfd(BENCH_PORT, 0),
    lambda vm: vm.ioeventfd(BENCH_PORT, 3),
    lambda vm: vm.ioeventfd(BENCH_PORT, 16),
    lambda vm: vm.ioeventfd(0x10000, 1),        # KVM itself would accept it
    lambda vm: vm.ioeventfd(0xFFFF, 2),
    lambda vm: vm.ioeventfd(-1, 1),
    lambda vm: vm.ioeventfd(1 << 64, 4, pio=False),
    lambda vm: vm.ioeventfd(BENCH_PORT, 1, datamatch=0x100),
    lambda vm: vm.ioeventfd(BENCH_PORT, 2, datamatch=-1),
], ids=["gsi-negative", "gsi-1024", "length-0", "length-3", "length-16", "port-past-0xffff",
        "port-range-past-0xffff", "addr-negative", "mmio-past-2^64", "datamatch-too-wide",
        "datamatch-negative"])
def test_bad_arguments_raise_valueerror_before_opening_an_fd(make):
    with Kvm() as kvm, kvm.create_vm() as vm:
        vm.create_irqchip()
        fds = open_fds()
        with pytest.raises(ValueError):
            make(vm)
        assert open_fds() == fds and vm.eventfds == ()


def test_mmio_ioeventfd_with_datamatch_is_accepted():
    with Kvm() as kvm, kvm.create_vm() as vm:
        doorbell = vm.ioeventfd(0xD000_0000, 4, pio=False, datamatch=0xFFFF_FFFF)
        assert vm.eventfds == (doorbell,)


def test_closing_the_vm_closes_its_eventfds():
    with Kvm() as kvm:
        with kvm.create_vm() as vm:
            vm.create_irqchip()
            closed_early = vm.irqfd(COM1_GSI)
            closed_early.close()
            owned = [vm.irqfd(COM1_GSI + 1), vm.ioeventfd(BENCH_PORT, 1)]
            assert vm.eventfds == tuple(owned)
        assert all(eventfd.closed for eventfd in owned)
        assert vm.eventfds == ()


def test_three_hundred_vms_with_eventfds_leak_no_fds():
    fds = open_fds()
    with Kvm() as kvm:
        for _ in range(300):
            with kvm.create_vm() as vm:
                vm.create_irqchip()
                vm.irqfd(COM1_GSI)
                vm.ioeventfd(BENCH_PORT, 1)
    assert open_fds() == fds


def test_a_resampling_irqfd_is_assigned_and_released_with_its_resample_eventfd():
    with Kvm() as kvm, kvm.create_vm() as vm:
        vm.create_irqchip()
        fds = open_fds()
        irq = vm.irqfd(20, resample=True)
        assert irq.resample is not None and open_fds() == fds + 2
        irq.signal()
        irq.close()
        assert open_fds() == fds and vm.eventfds == ()


def test_a_device_on_an_ioapic_only_gsi_gets_a_resampled_irqfd_line():
    config = VmConfig(kernel=guests.path("hello.bin"), serial="buffer", timeout=10)
    fds = open_fds()
    for _ in range(20):
        with Machine(config) as machine:
            isa, gsi = Attached(), Attached()
            machine.add_port_device(0x580, 4, isa, irq=5)
            machine.add_port_device(0x590, 4, gsi, irq=20)
            assert [eventfd.gsi for eventfd in machine.vm.eventfds] == [20]
            gsi.context.irq.high()
            isa.context.irq.pulse()
            assert machine.run().status == 0
    assert open_fds() == fds
