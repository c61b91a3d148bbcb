"""A hostile guest cannot grow the VMM or hold it past --timeout and SIGTERM:
counters stay bounded whatever addresses it touches, and console output that
nobody reads is dropped and counted, never waited for."""

import signal
import subprocess
import sys
import threading
import time

import peak_rss
import pytest

from pyvmm.config import VmConfig
from pyvmm.loader import LoadOptions
from pyvmm.machine import Machine
from pyvmm.machine.vcpus import VcpuManager
from pyvmm.run.stats import MAX_MMIO_KEYS, MAX_PORT_KEYS
from pyvmm.testing.hostile import mmio_scan_image, port_scan_image, serial_flood_image


def run_scan(count, exit_path, poll=None):
    config = VmConfig(serial="buffer", raw_mode="protected", exit_path=exit_path, timeout=120)
    with Machine(config, mmio_scan_image(count), LoadOptions(raw_mode="protected")) as machine:
        if poll is None:
            result = machine.run()
        else:
            outcome = {}
            runner = threading.Thread(target=lambda: outcome.update(result=machine.run()))
            runner.start()
            while runner.is_alive():
                poll(machine)
            runner.join()
            result = outcome["result"]
        return result, machine.stats


@pytest.mark.parametrize("exit_path", ["python", "fast"])
def test_a_guest_touching_ever_new_mmio_addresses_keeps_the_counters_bounded(exit_path):
    count = MAX_MMIO_KEYS + 3000
    result, stats = run_scan(count, exit_path)
    assert (result.status, result.reason) == (1, "debug-exit")
    by_mmio = stats.by_mmio()
    assert len(by_mmio) == MAX_MMIO_KEYS + 1
    assert by_mmio[("other", "any")] == count - MAX_MMIO_KEYS
    assert sum(by_mmio.values()) == count
    assert len(stats.format().splitlines()) < MAX_MMIO_KEYS + 40
    assert stats.as_dict()["mmio"][-1] == {"addr": "other", "dir": "any", "count": count - MAX_MMIO_KEYS}


@pytest.mark.parametrize("exit_path", ["python", "fast"])
def test_a_port_scan_keeps_the_counters_bounded(exit_path):
    config = VmConfig(serial="null", raw_mode="protected", exit_path=exit_path, timeout=120)
    with Machine(config, port_scan_image(), LoadOptions(raw_mode="protected")) as machine:
        result = machine.run()
        stats = machine.stats
    assert (result.status, result.reason) == (1, "debug-exit")
    by_port = stats.by_port()
    assert len(by_port) == MAX_PORT_KEYS + 1
    # six accesses per port, but for the few KVM answers itself (PIC, PIT, ELCR...)
    assert 6 * 65000 < sum(by_port.values()) <= (0x10000 - 4) * 6 + 1


def test_exit_stats_can_be_read_while_the_guest_adds_addresses():
    seen = []

    def poll(machine):
        seen.append(machine.exit_stats().total)
        time.sleep(0.001)

    result, stats = run_scan(MAX_MMIO_KEYS // 2, "python", poll)
    assert (result.status, result.reason) == (1, "debug-exit")
    assert len(seen) > 10 and seen == sorted(seen)


@pytest.mark.parametrize("exit_path", ["python", "fast"])
def test_exit_stats_read_while_the_run_ends_count_the_whole_run(exit_path, monkeypatch):
    """Between the vCPU threads' end and the run's last merge, a reader gets
    the whole run's counts, not an empty table."""
    seen = []
    stop_all = VcpuManager.stop_all

    def stop_all_then_read(manager):
        stop_all(manager)
        seen.append(machine.exit_stats().total)
    monkeypatch.setattr(VcpuManager, "stop_all", stop_all_then_read)
    config = VmConfig(serial="buffer", raw_mode="protected", exit_path=exit_path, timeout=60)
    with Machine(config, mmio_scan_image(100), LoadOptions(raw_mode="protected")) as machine:
        result = machine.run()
        total = machine.exit_stats().total
    assert (result.status, result.reason) == (1, "debug-exit")
    assert seen and total > 100 and all(reading == total for reading in seen), (seen, total)


def start_flooding(tmp_path, *options, peak_report=None):
    """`pyvmm run` of a guest printing forever, with stdout a pipe nobody reads;
    with `peak_report`, started by tests/peak_rss.py, which writes its peak RSS there."""
    image = tmp_path / "flood.bin"
    image.write_bytes(serial_flood_image(0xFFFFFFFF))
    command = [sys.executable, "-m", "pyvmm", "run", str(image), *options]
    if peak_report is not None:
        return peak_rss.popen(command, peak_report, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def test_a_stalled_stdout_does_not_hold_the_timeout(tmp_path):
    started = time.monotonic()
    report = tmp_path / "peak"
    vmm = start_flooding(tmp_path, "--timeout", "2", peak_report=report)
    try:
        code = vmm.wait(timeout=30)
    finally:
        peak_rss.kill(vmm)
    elapsed = time.monotonic() - started
    stderr = vmm.stderr.read().decode()
    assert code == 124, stderr
    assert elapsed < 2 + 3, f"{elapsed:.1f} s"     # the timeout, the final patience, start-up
    # What the pipe did not take is dropped and said so (tests/unit/test_console.py counts it).
    assert printed_no_more_than_the_pipe_holds(vmm) or "bytes of console output were dropped" in stderr
    assert peak_rss.peak_bytes(report) < 400 << 20                                   # bounded


def printed_no_more_than_the_pipe_holds(vmm):
    """Whether the guest printed no more than the pipe holds (nothing had to be dropped)."""
    return len(vmm.stdout.read()) < 1 << 16


def test_sigterm_ends_a_run_whose_stdout_is_stalled(tmp_path):
    vmm = start_flooding(tmp_path)
    try:
        time.sleep(2.0)                     # the pipe has long been full
        vmm.send_signal(signal.SIGTERM)
        sent = time.monotonic()
        code = vmm.wait(timeout=30)
        elapsed = time.monotonic() - sent
    finally:
        vmm.kill()
    assert code == 128 + signal.SIGTERM
    assert elapsed < 1.5, f"{elapsed:.1f} s"
