"""Seeing exits: hooks that observe, change and stop; --trace; pyvmm stats; --device."""

import json
import os
import subprocess
import sys

import pytest

from pyvmm import guests
from pyvmm.config import VmConfig
from pyvmm.loader import LoadOptions
from pyvmm.machine import Machine

HERE = os.path.dirname(os.path.abspath(__file__))

# mov dx,0x560; in al,dx; out 0xe9,al; in al,dx; out 0xe9,al; cli; hlt   (real mode)
READ_TWICE_AND_ECHO = bytes.fromhex("ba6005ece6e9ece6e9faf4")


def machine_for(code, **config):
    return Machine(VmConfig(serial="buffer", raw_mode="real", timeout=20, **config), code,
                   LoadOptions(raw_mode="real"))


def test_after_hook_changes_what_the_guest_reads():
    with machine_for(READ_TWICE_AND_ECHO) as machine:
        seen = []

        def answer(event):
            seen.append((event.reason, event.port, event.direction, event.data))
            event.data = b"Z" if len(seen) == 1 else b"!"

        machine.add_hook(answer, when="after", ports=range(0x560, 0x561))
        assert machine.run().reason == "halt"
    assert seen == [("io", 0x560, "in", b"\xff"), ("io", 0x560, "in", b"\xff")]
    assert machine.serial_output == b"Z!"       # debugcon 0xe9 shares the console


def test_before_hook_replies_instead_of_the_device_and_can_stop_the_vm():
    with machine_for(READ_TWICE_AND_ECHO) as machine:
        calls = []

        class Device:
            def read(self, offset, size):
                calls.append(offset)
                return b"d"

            def write(self, offset, data):
                pass

        machine.add_port_device(0x560, 1, Device())

        def first_reply_then_stop(event):
            if event.seq == 1:
                event.reply(b"h")
            else:
                event.stop(7, "seen enough")

        machine.add_hook(first_reply_then_stop, when="before", reasons={"io"}, ports={0x560})
        result = machine.run()
    assert (result.status, result.reason, result.message) == (7, "hook", "seen enough")
    assert machine.serial_output == b"h"        # the second read never reached the guest
    assert calls == [0]                          # the device answered only the second read


def test_hook_filters_by_reason_and_mmio_range():
    with Machine(VmConfig(kernel=guests.path("exits.bin"), serial="buffer", timeout=20)) as machine:
        reasons, addresses = set(), []
        machine.add_hook(lambda event: reasons.add(event.reason), reasons={"mmio", "io"})
        machine.add_hook(lambda event: addresses.append((event.address, event.direction,
                                                         event.data)),
                         reasons={"mmio"}, mmio=range(0xD0000000, 0xD0000010))
        machine.run()
    assert reasons == {"io", "mmio"}
    assert addresses == [(0xD0000000, "write", b"\x5a"), (0xD0000002, "write", b"\x5c\x5b"),
                         (0xD0000004, "write", b"\x60\x5f\x5e\x5d")]


def test_counters_are_readable_during_the_run():
    with machine_for(READ_TWICE_AND_ECHO) as machine:
        during = []
        machine.add_hook(lambda event: during.append(machine.exit_stats().total), ports={0x560})
        machine.run()
    assert during[0] >= 1 and during[1] > during[0]
    assert machine.stats.total >= during[1]


def pyvmm(*args, stdin=b"", env=None):
    return subprocess.run([sys.executable, "-m", "pyvmm", *args], input=stdin,
                          capture_output=True, timeout=120, env=env)


def test_trace_has_one_json_line_per_exit_and_stats_summarise_it(tmp_path):
    trace = tmp_path / "exits.jsonl"
    result = pyvmm("run", "--trace", str(trace), "--stats=json")
    assert result.returncode == 0
    counters = json.loads(result.stderr)
    records = [json.loads(line) for line in trace.read_text().splitlines()]
    assert len(records) == counters["exits"]
    assert [record["seq"] for record in records] == list(range(1, len(records) + 1))
    first = records[0]
    assert {"vcpu", "t_ns", "reason", "rip", "port", "size", "dir", "count", "data"} <= set(first)
    assert all(a["t_ns"] <= b["t_ns"] for a, b in zip(records, records[1:]))
    thr = [record for record in records if record["port"] == 0x3F8 and record["dir"] == "out"]
    assert b"".join(bytes.fromhex(record["data"]) for record in thr)[1:] == \
        b"Hello from a pyvmm guest!\n"               # after the divisor-latch write
    summary = pyvmm("stats", str(trace), "--json")
    totals = json.loads(summary.stdout)
    assert totals["exits"] == len(records)
    assert totals["reasons"][0]["name"] == "io"
    assert sum(row["count"] for row in totals["targets"]) == len(records)
    text = pyvmm("stats", str(trace)).stdout.decode()
    assert "port 0x03f8 out serial (COM1)" in text


def test_stats_refuses_a_file_that_is_not_a_trace(tmp_path):
    bogus = tmp_path / "bogus"
    bogus.write_text("hello\n")
    result = pyvmm("stats", str(bogus))
    assert result.returncode == 2
    assert result.stderr.decode().startswith("pyvmm: error: ")


def test_device_from_the_command_line(tmp_path):
    env = dict(os.environ, PYTHONPATH=HERE + os.pathsep + os.environ.get("PYTHONPATH", ""))
    kernel = tmp_path / "echo.bin"
    kernel.write_bytes(READ_TWICE_AND_ECHO)
    result = pyvmm("run", str(kernel), "--raw-mode", "real",
                   "--device", "example_devices:Scratch@0x560-0x563,registers=4,fill=0x41", env=env)
    assert (result.returncode, result.stdout) == (0, b"AA")


@pytest.mark.parametrize("spec, message", [
    ("example_devices:Scratch", "expected PKG.MODULE:CLASS@PORT"),
    ("no_such_module:Thing@0x560", "cannot import no_such_module"),
    ("example_devices:Nothing@0x560", "has no Nothing"),
    ("example_devices:Scratch@0x560,registers=x", "failed: TypeError"),
    ("example_devices:Scratch@0x3f8", "overlaps"),
    ("example_devices:Scratch@0x10000", "ports go up to 0xffff"),
])
def test_bad_device_specs_are_one_line_errors(spec, message):
    env = dict(os.environ, PYTHONPATH=HERE + os.pathsep + os.environ.get("PYTHONPATH", ""))
    result = pyvmm("run", "--device", spec, env=env)
    stderr = result.stderr.decode()
    assert result.returncode == 2, stderr
    assert stderr.count("\n") == 1 and stderr.startswith("pyvmm: error: --device")
    assert message in stderr


def test_unwritable_trace_is_a_usage_error(tmp_path):
    result = pyvmm("run", "--trace", str(tmp_path))
    assert result.returncode == 2
    assert result.stderr.decode() == f"pyvmm: error: cannot write trace {tmp_path}: Is a directory\n"


def test_unwritable_serial_file_is_a_usage_error(tmp_path):
    result = pyvmm("run", "--serial", f"file:{tmp_path}")
    assert result.returncode == 2
    assert result.stderr.decode() == \
        f"pyvmm: error: cannot write serial output {tmp_path}: Is a directory\n"
