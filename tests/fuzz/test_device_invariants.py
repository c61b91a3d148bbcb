"""Every device in pyvmm.devices keeps the device contract under any access.

Each device is registered at its usual place on a fresh bus with sentinel
recorders around it and driven by pyvmm.testing.drive through generated
access sequences (every size, string port I/O, addresses inside, around and
straddling its range); drive checks that no access raises, every read
returns exactly its size, and each access reaches exactly the device whose
range holds it (or none, then reading all-ones).  The whole PC platform's
buses get the same treatment, and a few device-specific promises (the
status debug-exit reports, callbacks only from the documented events) are
checked on the way.
"""

import pytest
from hypothesis import given, strategies as st

from pyvmm.arch.x86_64 import layout
from pyvmm.config import VmConfig
from pyvmm.devices import (AcpiPm, Bus, Cmos, DebugConsole, DebugExit, FwCfg, I8042, PcTestDev,
                           PciConfigAbsent, PostCode, Serial16550)
from pyvmm.devices.pc_testdev import BYTE_PORT_LENGTH
from pyvmm.machine.devices import DeviceManager
from pyvmm.memory import GuestMemory
from pyvmm.run.stop import StopSignal
from pyvmm.testing import (MMIO, PIO, Placement, access_sequences, accesses_for, drive,
                           fuzz_settings)

MIB = 1 << 20


class Calls:
    """Collects callback invocations: calls.record("name") is a callback."""

    def __init__(self):
        self.log = []

    def record(self, name):
        return lambda *args: self.log.append((name, *args))


class Clock:
    """A fake clock that advances 0.37 s (or ns equivalent) per reading."""

    def __init__(self, start=1_700_000_000.0, step=0.37):
        self.now = start
        self.step = step

    def seconds(self):
        self.now += self.step
        return self.now

    def nanoseconds(self):
        return int(self.seconds() * 1e9)


def serial(calls):
    return [Placement(PIO, 0x3F8, 8, Serial16550(output=calls.record("output"),
                                                 irq=calls.record("irq")), "serial")]


def debug_exit(calls):
    return [Placement(PIO, 0xF4, 4, DebugExit(calls.record("exit")), "debug-exit")]


def i8042(calls):
    device = I8042(on_reset=calls.record("reset"), set_irq=calls.record("irq"))
    return [Placement(PIO, *layout.I8042_DATA, device.data, "i8042 data"),
            Placement(PIO, *layout.I8042_COMMAND, device.command, "i8042 status/command")]


def cmos(calls):
    return [Placement(PIO, 0x70, 2, Cmos(128 * MIB, cpus=2, now=Clock().seconds), "cmos")]


def post(calls):
    return [Placement(PIO, 0x80, 1, PostCode(now=Clock().nanoseconds), "post")]


def debugcon(calls):
    return [Placement(PIO, 0xE9, 1, DebugConsole(calls.record("console")), "debugcon")]


def acpi(calls):
    pm = AcpiPm(on_poweroff=calls.record("poweroff"), on_reset=calls.record("reset"),
                on_sleep=calls.record("sleep"), now=Clock().nanoseconds, set_sci=calls.record("sci"))
    return [Placement(PIO, *layout.ACPI_PM, pm, "acpi-pm"),
            Placement(PIO, layout.ACPI_RESET_PORT - 8, 1, pm.reset_control, "reset-control")]


def pci(calls):
    pm = AcpiPm(on_poweroff=calls.record("poweroff"), on_reset=calls.record("reset"),
                on_sleep=calls.record("sleep"), now=Clock().nanoseconds)
    return [Placement(PIO, 0xCF8, 8, PciConfigAbsent(reset_control=pm.reset_control), "pci-config")]


def fw_cfg(calls):
    device = FwCfg(128 * MIB, 2, "console=ttyS0", files={"etc/a": b"A" * 70, "opt/b": b""})
    return [Placement(PIO, 0x510, 2, device, "fw_cfg")]


def pc_testdev(calls):
    device = PcTestDev(set_irq=calls.record("irq"), flush_page=calls.record("flush"))
    return [Placement(PIO, *layout.PC_TESTDEV_PORTS, device.ports, "pc-testdev ports"),
            Placement(PIO, *layout.PC_TESTDEV_IRQ_LINES, device.irq_lines, "pc-testdev irq lines"),
            Placement(MMIO, *layout.PC_TESTDEV_MMIO, device.iomem, "pc-testdev iomem"),
            # The byte-wise scratch mirror, at a place of its own (QEMU's 0xe8 is debugcon's here).
            Placement(PIO, 0x1E8, BYTE_PORT_LENGTH, device.byte_port, "pc-testdev byte port")]


DEVICES = {
    "serial": serial, "debug-exit": debug_exit, "i8042": i8042, "cmos": cmos, "post": post,
    "debugcon": debugcon, "acpi-pm": acpi, "pci-config": pci, "fw_cfg": fw_cfg,
    "pc-testdev": pc_testdev,
}
# Callbacks each device may call, and nothing else.
ALLOWED_CALLBACKS = {
    "serial": {"output", "irq"}, "debug-exit": {"exit"}, "i8042": {"reset", "irq"}, "cmos": set(),
    "post": set(), "debugcon": {"console"}, "acpi-pm": {"poweroff", "reset", "sleep", "sci"},
    "pci-config": {"reset"}, "fw_cfg": set(), "pc-testdev": {"irq", "flush"},
}


def sequences_for(placements):
    return access_sequences(accesses_for(placements, margin=8), max_size=30)


@pytest.mark.parametrize("name", sorted(DEVICES))
@fuzz_settings(max_examples=60)
@given(data=st.data())
def test_device_keeps_the_contract(name, data):
    calls = Calls()
    placements = DEVICES[name](calls)
    accesses = data.draw(sequences_for(placements), label="accesses")
    drive(placements, accesses)
    assert {call[0] for call in calls.log} <= ALLOWED_CALLBACKS[name]
    if name == "debug-exit":
        assert all(status & 1 for _, status in calls.log), calls.log
    if name == "serial":
        levels = [args[0] for args in (call[1:] for call in calls.log if call[0] == "irq")]
        assert all(a != b for a, b in zip(levels, levels[1:])), "irq callback without a level change"


@pytest.mark.parametrize("name", sorted(DEVICES))
@fuzz_settings(max_examples=15)
@given(data=st.data())
def test_device_alone_on_a_bus_keeps_the_contract(name, data):
    """The same without sentinels: the device's own Bus routes the accesses."""
    placements = DEVICES[name](Calls())
    accesses = data.draw(sequences_for(placements), label="accesses")
    port_bus, mmio_bus = Bus.port_io(), Bus.mmio()
    for placement in placements:
        bus = port_bus if placement.kind == PIO else mmio_bus
        bus.register(placement.base, placement.length, placement.device, name=placement.name)
    drive((port_bus, mmio_bus), accesses, sentinels=False)


class IrqRecorder:
    """What DeviceManager needs of a Vm: interrupt lines, recorded."""

    def __init__(self, calls):
        self.irq_line = calls.record("irq")


MEMORY = GuestMemory([(0, MIB)])


def platform():
    """The PC platform's devices on fresh buses, as a Machine's device manager
    places them (COM1 and debug-exit included), without KVM."""
    stop = StopSignal()
    calls = Calls()
    devices = DeviceManager(VmConfig(memory=64 * MIB, cpus=2, cmdline="x"), MEMORY, IrqRecorder(calls),
                            stop, calls.record("console"), "pvh")
    return devices.port_bus, devices.mmio_bus, stop, calls


PLATFORM_PORT_BUS, PLATFORM_MMIO_BUS, _, _ = platform()
PLATFORM_RANGES = ([(PIO, base, length) for base, length, _ in PLATFORM_PORT_BUS.ranges()]
                   + [(MMIO, base, length) for base, length, _ in PLATFORM_MMIO_BUS.ranges()])


@fuzz_settings(max_examples=100)
@given(accesses=access_sequences(accesses_for(PLATFORM_RANGES, margin=4), max_size=40))
def test_whole_platform_bus_keeps_the_contract(accesses):
    port_bus, mmio_bus, stop, calls = platform()
    drive((port_bus, mmio_bus), accesses, margin=4)
    if stop.result is not None:  # the first stop request wins; the run would end there
        assert stop.result.status == 0 or stop.result.status & 1
        assert stop.result.reason in ("reset", "poweroff", "sleep-s3", "debug-exit")
