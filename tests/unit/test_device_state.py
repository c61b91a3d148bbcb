"""Every device's state as plain data (save_state / restore_state, see
pyvmm/devices/state.py), without KVM.

For each device, hypothesis drives one instance through guest accesses (and
host input), saves its state through JSON and restores it into a new
instance. The two then save the same state, and behave the same from there:
the same answers to the same accesses, the same output, interrupt levels,
resets and exits, and the same state at the end. A damaged state is refused
with DeviceStateError (a ValueError), or taken and still a working device;
nothing else comes out of restore_state.
"""

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pyvmm.devices import (AcpiPm, Cmos, DebugConsole, DebugExit, FwCfg, I8042, PcTestDev, PciConfigAbsent,
                           PostCode, Serial16550)
from pyvmm.devices.state import DeviceStateError, apply_runs, sparse_runs, StateReader
from pyvmm.testing import Placement, accesses_for, drive

SETTINGS = dict(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


class Clock:
    """A clock the test moves: seconds (as time.time) and nanoseconds (as monotonic_ns)."""

    def __init__(self):
        self.ns = 1_700_000_000 * 10**9

    def seconds(self):
        return self.ns / 1e9

    def nanoseconds(self):
        return self.ns


class Rig:
    """One device with what it reaches recorded in `log`."""

    def __init__(self, make, clock):
        self.log = []
        self.owner, self.placements, self.feed = make(self.log.append, clock)

    def drive(self, accesses, host_input=b""):
        if host_input and self.feed:
            self.feed(host_input)
        return drive(self.placements, accesses)


def uart(record, clock):
    device = Serial16550(output=lambda data: record(("out", data)), irq=lambda level: record(("irq", level)))
    return device, [Placement("pio", 0x3F8, 8, device)], device.feed


def cmos(record, clock):
    device = Cmos(256 << 20, cpus=2, now=clock.seconds)
    return device, [Placement("pio", 0x70, 2, device)], None


def i8042(record, clock):
    device = I8042(on_reset=lambda: record("reset"), set_irq=lambda line, level: record(("irq", line, level)))
    return device, [Placement("pio", 0x60, 1, device.data), Placement("pio", 0x64, 1, device.command)], None


def acpi_pm(record, clock):
    device = AcpiPm(on_poweroff=lambda: record("poweroff"), on_reset=lambda: record("reset"),
                    on_sleep=lambda state: record(("sleep", state)), now=clock.nanoseconds,
                    set_sci=lambda level: record(("sci", level)))
    return device, [Placement("pio", 0x600, 12, device), Placement("pio", 0xCF9, 1, device.reset_control)], None


def fw_cfg(record, clock):
    device = FwCfg(128 << 20, 2, "console=ttyS0", files={"etc/a": b"alpha", "opt/b": bytes(range(40))})
    return device, [Placement("pio", 0x510, 2, device)], None


def post(record, clock):
    device = PostCode(now=clock.nanoseconds, history_limit=16)
    return device, [Placement("pio", 0x80, 1, device)], None


def pc_testdev(record, clock):
    device = PcTestDev(lambda line, level: record(("irq", line, level)), flush_page=lambda page: record(page))
    return device, [Placement("pio", 0xE0, 8, device.ports), Placement("pio", 0x2000, 24, device.irq_lines),
                    Placement("mmio", 0xFF000000, 0x10000, device.iomem)], None


def debug_exit(record, clock):
    device = DebugExit(lambda status: record(("exit", status)))
    return device, [Placement("pio", 0xF4, 4, device)], None


def debugcon(record, clock):
    device = DebugConsole(lambda data: record(("out", data)))
    return device, [Placement("pio", 0xE9, 1, device)], None


def pci(record, clock):
    device = PciConfigAbsent()
    return device, [Placement("pio", 0xCF8, 8, device)], None


DEVICES = [uart, cmos, i8042, acpi_pm, fw_cfg, post, pc_testdev, debug_exit, debugcon, pci]


def accesses(make):
    placements = make(lambda _: None, Clock())[1]
    return st.lists(accesses_for([(p.kind, p.base, p.length) for p in placements], margin=2), max_size=40)


def through_json(state):
    return json.loads(json.dumps(state))


@pytest.mark.parametrize("make", DEVICES, ids=[make.__name__ for make in DEVICES])
@settings(**SETTINGS)
@given(data=st.data())
def test_a_restored_device_behaves_as_the_original(make, data):
    clock = Clock()
    original = Rig(make, clock)
    original.drive(data.draw(accesses(make), label="before"), data.draw(st.binary(max_size=40), label="input"))
    clock.ns += data.draw(st.integers(0, 5 * 10**9), label="elapsed")
    state = through_json(original.owner.save_state())

    copy = Rig(make, clock)
    copy.owner.restore_state(state)
    assert through_json(copy.owner.save_state()) == state
    original.log.clear()
    copy.log.clear()

    later = data.draw(accesses(make), label="after")
    host_input = data.draw(st.binary(max_size=20), label="more input")
    expected, actual = original.drive(later, host_input), copy.drive(later, host_input)
    assert actual.reads() == expected.reads()
    assert [outcome.events for outcome in actual.outcomes] == [outcome.events for outcome in expected.outcomes]
    assert copy.log == original.log
    assert through_json(copy.owner.save_state()) == through_json(original.owner.save_state())


def test_restore_drives_the_interrupt_line_to_the_saved_level():
    uart_log = []
    device = Serial16550(irq=uart_log.append)
    device.write(1, b"\x02")                        # THR-empty interrupt on: the line goes high
    assert uart_log == [True]
    copy_log = []
    copy = Serial16550(irq=copy_log.append)
    copy.restore_state(device.save_state())
    assert copy_log == [True] and copy.irq_level


def damaged(state, draw):
    key = draw(st.sampled_from(sorted(state)))
    how = draw(st.sampled_from(["drop", "add", "type", "big", "negative"]))
    broken = dict(state)
    if how == "drop":
        del broken[key]
    elif how == "add":
        broken["unexpected"] = 1
    elif how == "type":
        broken[key] = draw(st.sampled_from([None, "zz", 1.5, [1, 2, 3], {"a": 1}, True]))
    elif how == "big":
        broken[key] = 1 << 70
    else:
        broken[key] = -5
    return broken


@pytest.mark.parametrize("make", DEVICES, ids=[make.__name__ for make in DEVICES])
@settings(**SETTINGS)
@given(data=st.data())
def test_a_damaged_state_is_refused_or_gives_a_working_device(make, data):
    clock = Clock()
    original = Rig(make, clock)
    original.drive(data.draw(accesses(make), label="before"))
    state = through_json(original.owner.save_state())
    broken = damaged(state, data.draw)
    copy = Rig(make, clock)
    before = through_json(copy.owner.save_state())
    try:
        copy.owner.restore_state(broken)
    except DeviceStateError as error:
        assert str(error)
        assert through_json(copy.owner.save_state()) == before      # a refused state changes nothing
    copy.drive(data.draw(accesses(make), label="after"))            # the device contract holds either way


def test_the_error_names_the_device_and_the_field():
    state = Serial16550().save_state()
    state["rx"] = "00" * 2
    with pytest.raises(DeviceStateError, match=r"serial: rx: 2 bytes in a receiver of 1"):
        Serial16550().restore_state(state)
    with pytest.raises(DeviceStateError, match=r"i8042: the saved state is list"):
        I8042(on_reset=lambda: None).restore_state([])


@given(memory=st.lists(st.tuples(st.integers(0, 4095), st.binary(min_size=1, max_size=40)), max_size=8))
def test_sparse_runs_keep_a_memory(memory):
    image = bytearray(4096)
    for offset, data in memory:
        image[offset:offset + len(data)] = data[:4096 - offset]
    runs = through_json(sparse_runs(bytes(image)))
    restored = bytearray(b"\xaa" * 4096)
    reader = StateReader({"m": runs}, "test")
    apply_runs(reader, "m", restored)
    assert restored == image
    assert len(runs) <= len(memory)
