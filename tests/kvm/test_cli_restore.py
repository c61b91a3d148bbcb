"""`pyvmm run --restore DIR`: the guest goes on in a new process, its console
output continuing on that process's stdout with nothing repeated or lost;
a damaged, foreign or mismatched snapshot, or an option a snapshot cannot
take, is one `pyvmm: error:` line and exit status 2, and changes nothing."""

import contextlib
import hashlib
import json
import os
import shutil
import struct
import subprocess
import sys
import threading
import time

import pytest

from pyvmm import guests
from pyvmm.config import VmConfig
from pyvmm.machine import Machine, MachineStateError, SnapshotError

FLOOD_LINE = b"0123456789abcdef" * 3 + b"0123456789abcde\n"


def pyvmm(*args, stdin=subprocess.DEVNULL, timeout=120):
    return subprocess.run([sys.executable, "-m", "pyvmm", *args], stdin=stdin, capture_output=True,
                          timeout=timeout, check=False)


def flood_image(count):
    with open(guests.path("serial_flood.bin"), "rb") as f:
        image = bytearray(f.read())
    struct.pack_into("<I", image, 0x24, count)
    return bytes(image)


def snapshot_while_printing(directory, count, cpus=1):
    """Pauses serial_flood on the fast path once it printed a little, snapshots it."""
    config = VmConfig(serial="buffer", raw_mode="protected", exit_path="fast", timeout=60, cpus=cpus)
    with Machine(config, flood_image(count), None) as machine:
        def take():
            while machine.serial.bytes_transmitted < 3000:
                time.sleep(0.005)
            assert machine.pause()
            machine.snapshot(directory)
            machine.shutdown()
        taker = threading.Thread(target=take)
        taker.start()
        result = machine.run()
        taker.join()
        assert result.reason == "shutdown"
        return machine.serial_output


@pytest.fixture(scope="module")
def flood_snapshot(tmp_path_factory):
    directory = str(tmp_path_factory.mktemp("flood") / "vm")
    before = snapshot_while_printing(directory, 50_000)
    return directory, before


def test_output_continues_on_the_new_process_stdout(flood_snapshot):
    directory, before = flood_snapshot
    assert 3000 <= len(before) < 50_000
    finished = pyvmm("run", "--restore", directory, "--timeout", "60")
    assert finished.returncode == 1, finished.stderr            # debug-exit 0
    assert finished.stderr == b""
    assert before + finished.stdout == (FLOOD_LINE * (50_000 // 64 + 1))[:50_000]


def test_a_snapshot_restores_any_number_of_times(flood_snapshot):
    directory, before = flood_snapshot
    first = pyvmm("run", "--restore", directory, "--exit-path", "python", "--timeout", "60")
    second = pyvmm("run", "--restore", directory, "--timeout", "60")
    assert first.stdout == second.stdout and first.returncode == second.returncode == 1


@contextlib.contextmanager
def snapshot_when_asked(machine, directory):
    """Yields an Event; once it is set, a thread waits for the machine to
    pause, snapshots it into `directory` and shuts it down. The thread starts
    here: hooks run on vCPU threads, which may start none."""
    asked, ended, taken = threading.Event(), [], []

    def take():
        if asked.wait(60) and not ended:
            if machine.wait_paused(30):
                machine.snapshot(directory)
                taken.append(directory)
            machine.shutdown()
    taker = threading.Thread(target=take)
    taker.start()
    try:
        yield asked
    finally:
        ended.append(True)
        asked.set()
        taker.join(60)
    assert taken, "the machine did not pause"


def test_host_input_not_yet_read_goes_with_the_snapshot(tmp_path):
    """status.bin reads a number from the UART: what it had not read yet when
    it was paused is part of the snapshot and reaches it in the new process."""
    directory = str(tmp_path / "vm")
    config = VmConfig(kernel=guests.path("status.bin"), serial="buffer", timeout=60)
    with Machine(config) as machine:
        machine.serial.feed(b"4242\n")
        seen = []
        with snapshot_when_asked(machine, directory) as asked:
            def pause_early(event):
                seen.append(event)
                if machine.serial.bytes_received == 2 and not machine.stop.requested and len(seen) < 10**6:
                    seen.extend([None] * 10**6)     # once: "42" read, "42\n" still to come
                    machine.request_pause()
                    asked.set()
            machine.add_hook(pause_early)
            assert machine.run().reason == "shutdown"
        assert machine.serial.pending_input() + machine.serial.rx_level > 0
    finished = pyvmm("run", "--restore", directory, "--serial", "null")
    assert finished.returncode == (4242 << 1 | 1) & 0xFF, finished.stderr


def test_smp_guest_restores_on_two_vcpus(tmp_path):
    directory = str(tmp_path / "vm")
    config = VmConfig(kernel=guests.path("smp.bin"), serial="buffer", cpus=2, timeout=60)
    with Machine(config) as machine:
        with snapshot_when_asked(machine, directory) as asked:
            def pause_after_the_first_line(event):
                if not asked.is_set() and b"\n" in machine.serial_output:
                    machine.request_pause()     # once: "bsp 0" out, the AP's line still to come
                    asked.set()
            machine.add_hook(pause_after_the_first_line, when="after", reasons={"io"})
            assert machine.run().reason == "shutdown"
        before = machine.serial_output
    assert before.startswith(b"bsp 0\n") and before != b"bsp 0\ncpu 1 up\ncpus 2\n"
    finished = pyvmm("run", "--restore", directory)
    assert before + finished.stdout == b"bsp 0\ncpu 1 up\ncpus 2\n"
    assert finished.returncode == 5


# --- what is refused -------------------------------------------------------------------

def error_line(finished):
    lines = finished.stderr.decode().splitlines()
    assert finished.returncode == 2, finished.stderr
    assert len(lines) == 1 and lines[0].startswith("pyvmm: error: "), lines
    assert finished.stdout == b""
    return lines[0]


def copy_of(flood_snapshot, tmp_path):
    directory = str(tmp_path / "copy")
    shutil.copytree(flood_snapshot[0], directory)
    return directory


def rewrite_state(directory, change):
    path = os.path.join(directory, "state.json")
    with open(path) as f:
        document = json.load(f)
    change(document)
    body = json.dumps(document["state"], sort_keys=True, separators=(",", ":"))
    document["checksum"] = "sha256:" + hashlib.sha256(body.encode()).hexdigest()
    with open(path, "w") as f:
        json.dump(document, f)


@pytest.mark.parametrize("damage, message", [
    (lambda d: os.remove(os.path.join(d, "state.json")), "cannot read .*state.json"),
    (lambda d: open(os.path.join(d, "state.json"), "w").write("{not json"), "state.json is damaged"),
    (lambda d: open(os.path.join(d, "state.json"), "w").write("[]"), "is not a pyvmm snapshot"),
    (lambda d: rewrite_state(d, lambda doc: doc.update(version=99)), "version 99; this pyvmm reads version 1"),
    (lambda d: rewrite_state(d, lambda doc: doc.update(format="firecracker")), "is not a pyvmm snapshot"),
    (lambda d: rewrite_state(d, lambda doc: doc["state"]["vcpus"][0]["regs"].pop("rip")), "KVM state is damaged.*rip"),
    (lambda d: rewrite_state(d, lambda doc: doc["state"]["devices"]["serial"].update(lcr=4096)),
     "device state is damaged: serial: lcr"),
    (lambda d: rewrite_state(d, lambda doc: doc["state"]["devices"].pop("cmos")), "devices do not match"),
    (lambda d: rewrite_state(d, lambda doc: doc["state"]["vcpus"][0]["sregs"].update(cr0=0x80000000)),
     "KVM refused the snapshot's state"),
    (lambda d: os.truncate(os.path.join(d, "memory"), 4096), "memory is damaged: 4096 bytes"),
    (lambda d: os.remove(os.path.join(d, "memory")), "cannot read .*memory"),
    (lambda d: json.dump(dict(json.load(open(os.path.join(d, "config.json"))), memory=256 << 20),
                         open(os.path.join(d, "config.json.new"), "w"))
     or os.replace(os.path.join(d, "config.json.new"), os.path.join(d, "config.json")),
     "does not match the snapshot's memory layout"),
    (lambda d: json.dump(dict(json.load(open(os.path.join(d, "config.json"))), cpus="two"),
                         open(os.path.join(d, "config.json.new"), "w"))
     or os.replace(os.path.join(d, "config.json.new"), os.path.join(d, "config.json")), "cpus has the wrong type"),
], ids=["no-state", "not-json", "not-an-object", "version", "foreign", "missing-register", "device-field",
        "missing-device", "refused-by-kvm", "truncated-memory", "no-memory", "memory-mismatch", "config-type"])
def test_a_damaged_or_foreign_snapshot_is_one_error_line(flood_snapshot, tmp_path, damage, message):
    directory = copy_of(flood_snapshot, tmp_path)
    damage(directory)
    before = {name: os.stat(os.path.join(directory, name)).st_mtime_ns for name in os.listdir(directory)}
    line = error_line(pyvmm("run", "--restore", directory))
    assert __import__("re").search(message, line), line
    assert {name: os.stat(os.path.join(directory, name)).st_mtime_ns for name in os.listdir(directory)} == before


def test_a_flipped_byte_in_the_state_is_caught(flood_snapshot, tmp_path):
    directory = copy_of(flood_snapshot, tmp_path)
    path = os.path.join(directory, "state.json")
    data = bytearray(open(path, "rb").read())
    data[len(data) // 2] ^= 0x01
    open(path, "wb").write(data)
    line = error_line(pyvmm("run", "--restore", directory))
    assert "damaged" in line or "not a pyvmm snapshot" in line


@pytest.mark.parametrize("args, message", [
    (["KERNEL"], "KERNEL cannot be given"),
    (["--memory", "128M"], "--memory cannot be given"),
    (["--cpus", "2", "--cmdline", "x"], "--cpus, --cmdline cannot be given"),
    (["--paused"], "--paused needs --api-socket"),
])
def test_options_that_shape_the_machine_are_refused(flood_snapshot, args, message):
    args = [guests.path("hello.bin") if arg == "KERNEL" else arg for arg in args]
    line = error_line(pyvmm("run", "--restore", flood_snapshot[0], *args))
    assert message in line


def test_paused_without_an_api_socket_is_refused():
    assert "--paused needs --api-socket" in error_line(pyvmm("run", "--paused"))


def test_no_snapshot_directory_is_one_error_line(tmp_path):
    assert "no such directory" in error_line(pyvmm("run", "--restore", str(tmp_path / "missing")))
    (tmp_path / "file").write_text("x")
    assert "is not a snapshot directory" in error_line(pyvmm("run", "--restore", str(tmp_path / "file")))


def test_a_directory_holding_a_snapshot_is_never_written_over(flood_snapshot, tmp_path):
    directory = copy_of(flood_snapshot, tmp_path)
    before = {name: open(os.path.join(directory, name), "rb").read() for name in ("config.json", "state.json")}
    with Machine(VmConfig(kernel=guests.path("hello.bin"), serial="buffer")) as machine:
        with pytest.raises(SnapshotError, match="already holds a snapshot"):
            machine.snapshot(directory)
    assert {name: open(os.path.join(directory, name), "rb").read() for name in before} == before
    assert sorted(os.listdir(directory)) == ["config.json", "memory", "state.json"]


def test_a_running_or_ended_machine_cannot_be_snapshotted(tmp_path):
    config = VmConfig(serial="null", raw_mode="protected", timeout=30)
    with Machine(config, flood_image(5_000_000), None) as machine:
        errors = []

        def attempt():
            while machine.serial.bytes_transmitted < 100:
                time.sleep(0.005)
            try:
                machine.snapshot(str(tmp_path / "running"))
            except MachineStateError as error:
                errors.append(str(error))
            machine.shutdown()
        taker = threading.Thread(target=attempt)
        taker.start()
        machine.run()
        taker.join()
        assert errors == ["the VM is running: pause it before a snapshot"]
        with pytest.raises(MachineStateError, match="the guest ended the run"):
            machine.snapshot(str(tmp_path / "ended"))
    assert not os.path.exists(tmp_path / "running") and not os.path.exists(tmp_path / "ended")


def test_snapshot_files_are_private_and_memory_is_sparse(flood_snapshot):
    directory = flood_snapshot[0]
    for name in ("config.json", "state.json", "memory"):
        assert os.stat(os.path.join(directory, name)).st_mode & 0o777 == 0o600
    memory = os.stat(os.path.join(directory, "memory"))
    assert memory.st_size == 128 << 20
    assert memory.st_blocks * 512 < 1 << 20                 # a tiny guest: holes all but a few pages
    config = json.load(open(os.path.join(directory, "config.json")))
    assert config["memory"] == 128 << 20 and config["cpus"] == 1
