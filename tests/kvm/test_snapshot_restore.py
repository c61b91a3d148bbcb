"""Snapshot and restore across processes, against an uninterrupted run.

For every bundled guest that ends by itself (test_fastpath.GUESTS) and the
SMP guest: pause at an exit hypothesis chooses, snapshot, end that process's
run, restore the snapshot in a new process (restore_worker.py, the public
Machine.restore) and run it to its end. The output before the snapshot and
the restored run's output must make the uninterrupted run's output, with
the same exit status and the same final state of every device (minus what
the host's clocks decide: the RTC's time registers, the PM timer, the POST
timestamps).

The pause happens on the Python loop (exits counted by a hook); the restored
process runs the fast path. test_cli_restore covers `pyvmm run --restore`
and a pause taken in the middle of fast-path output.
"""

import json
import os
import subprocess
import sys
import threading

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from snapshot_devices import exits_devices
from test_fastpath import GUESTS

from pyvmm import guests
from pyvmm.config import VmConfig
from pyvmm.machine import Machine, MachineStateError, read_kernel

HERE = os.path.dirname(os.path.abspath(__file__))
CASES = [(name, options) for name, options, _exact in GUESTS] + [("smp.bin", {"cpus": 2})]
TIME_REGISTERS = (0x00, 0x02, 0x04, 0x06, 0x07, 0x08, 0x09, 0x32)
TMR_STS = 1


def machine_for(name, options):
    options = dict(options)
    stdin = options.pop("stdin", b"")
    image = options.pop("image", None)
    devices = exits_devices() if options.pop("devices", None) else []
    raw_mode = {"real.bin": "real", "long.bin": "long"}.get(name)
    config = VmConfig(kernel=guests.path(name), serial="buffer", raw_mode=raw_mode, timeout=60,
                      exit_path="python", **options)
    kernel, load_options = read_kernel(config)
    machine = Machine(config, image or kernel, load_options)
    for bus, base, length, device, device_name in devices:
        getattr(machine, f"add_{bus}_device")(base, length, device, name=device_name)
    if stdin:
        machine.serial.feed(stdin)
    return machine


def timeless(devices):
    """Device states without what the host's clocks decide."""
    devices = json.loads(json.dumps(devices))
    cmos = devices["cmos"]
    ram = bytearray.fromhex(cmos["ram"])
    for register in TIME_REGISTERS:
        ram[register] = 0
    cmos["ram"] = ram.hex()
    cmos.pop("updated_second")
    pm = devices["acpi-pm"]
    pm["sts"] &= ~TMR_STS
    pm.pop("timer_ticks")
    pm.pop("timer_overflow_tick")
    devices["post"]["history"] = [value for _time, value in devices["post"]["history"]]
    return devices


_uninterrupted = {}


def uninterrupted(name, options):
    """(output, status, reason, devices, exits) of a run left alone (computed once)."""
    key = (name, repr(sorted(options.items())))
    if key not in _uninterrupted:
        with machine_for(name, options) as machine:
            result = machine.run()
            _uninterrupted[key] = (machine.serial_output, result.status, result.reason,
                                   timeless(machine.devices.save_state()), machine.stats.total)
    return _uninterrupted[key]


def snapshot_at(name, options, exits, directory):
    """Runs until exit number `exits`, pauses there and snapshots; the output so
    far, or None when the guest ended first."""
    with machine_for(name, options) as machine:
        seen, reached = [0], threading.Event()

        def count(event):
            seen[0] += 1
            if seen[0] == exits:
                machine.request_pause()
                reached.set()

        def take():
            if reached.wait(60) and machine.wait_paused(10):     # False: the guest ended there
                try:
                    machine.snapshot(directory)
                except MachineStateError:           # the guest ended the run at that very exit
                    return
                machine.shutdown()

        machine.add_hook(count)
        taker = threading.Thread(target=take, daemon=True)
        taker.start()
        result = machine.run()
        taker.join(60)
        if result.reason != "shutdown":
            return None
        return machine.serial_output


def restore_elsewhere(directory, recorders):
    worker = subprocess.run([sys.executable, os.path.join(HERE, "restore_worker.py"), directory,
                             "recorders" if recorders else ""],
                            capture_output=True, timeout=120, check=False)
    assert worker.returncode == 0, worker.stderr.decode()
    return json.loads(worker.stdout)


@pytest.mark.parametrize("name, options", CASES, ids=[name for name, _ in CASES])
@settings(max_examples=2, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_a_restored_guest_ends_as_if_never_interrupted(name, options, data, tmp_path_factory):
    output, status, reason, devices, exits = uninterrupted(name, options)
    at = data.draw(st.integers(1, max(1, exits - 1)), label="pause at exit")
    directory = str(tmp_path_factory.mktemp("snapshot") / "vm")
    before = snapshot_at(name, options, at, directory)
    if before is None:
        return                                  # timing-dependent guests may end sooner
    after = restore_elsewhere(directory, recorders=bool(options.get("devices")))
    assert before + bytes.fromhex(after["output"]) == output
    assert (after["status"], after["reason"]) == (status, reason)
    assert timeless(after["devices"]) == devices
