"""A hostile guest cannot grow the VMM or hold it past --timeout and SIGTERM:
counters stay bounded whatever addresses it touches, and console output that
nobody reads is dropped and counted, never waited for."""

import resource
import signal
import struct
import subprocess
import sys
import threading
import time

import pytest

from pyvmm import guests
from pyvmm.config import VmConfig
from pyvmm.loader import LoadOptions
from pyvmm.machine import Machine
from pyvmm.run.stats import MAX_MMIO_KEYS


def mmio_scan_image(count, base=0xD0000000, stride=8):
    """Flat protected-mode code: `count` reads at base, base + stride, ... (no
    device there), then debug-exit 0."""
    code = b"\xB9" + struct.pack("<I", count) + b"\xBE" + struct.pack("<I", base)   # mov ecx; mov esi
    body = b"\x8B\x06" + b"\x83\xC6" + bytes((stride,)) + b"\x49"                  # mov eax,[esi]; add esi; dec ecx
    code += body + b"\x75" + bytes((256 - len(body) - 2,))                          # jnz
    return code + b"\x30\xC0\xE6\xF4\xF4"                                          # xor al,al; out 0xf4,al; hlt


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


def test_exit_stats_can_be_read_while_the_guest_adds_addresses():
    seen = []

    def poll(machine):
        seen.append(machine.exit_stats().total)
        time.sleep(0.001)

    result, stats = run_scan(MAX_MMIO_KEYS // 2, "python", poll)
    assert (result.status, result.reason) == (1, "debug-exit")
    assert len(seen) > 10 and seen == sorted(seen)


def flood_image(count):
    with open(guests.path("serial_flood.bin"), "rb") as f:
        image = bytearray(f.read())
    struct.pack_into("<I", image, 0x24, count)
    return bytes(image)


def start_flooding(tmp_path, *options):
    """`pyvmm run` of a guest printing forever, with stdout a pipe nobody reads."""
    image = tmp_path / "flood.bin"
    image.write_bytes(flood_image(0xFFFFFFFF))
    return subprocess.Popen([sys.executable, "-m", "pyvmm", "run", str(image), *options],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def test_a_stalled_stdout_does_not_hold_the_timeout(tmp_path):
    started = time.monotonic()
    vmm = start_flooding(tmp_path, "--timeout", "2")
    try:
        code = vmm.wait(timeout=30)
    finally:
        vmm.kill()
    elapsed = time.monotonic() - started
    stderr = vmm.stderr.read().decode()
    assert code == 124, stderr
    assert elapsed < 2 + 3, f"{elapsed:.1f} s"     # the timeout, the final patience, start-up
    assert "bytes of console output were dropped" in stderr
    assert resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss < 400 << 10     # KiB: bounded


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
