"""The seccomp sandbox on real runs: every thread confined, a device's
forbidden call named, nothing left behind (pyvmm.sandbox)."""

import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from pyvmm import guests
from pyvmm.config import VmConfig
from pyvmm.loader import LoadOptions
from pyvmm.machine import Machine

HERE = os.path.dirname(os.path.abspath(__file__))
ENV = dict(os.environ, PYTHONPATH=HERE + os.pathsep + os.environ.get("PYTHONPATH", ""))
# Real mode: one write to port 0x560, then debug-exit 0 (status 1).
WRITE_ONCE = bytes.fromhex("ba6005" "ee" "b000" "e6f4" "f4" "ebfe")


def pyvmm(*args, timeout=60):
    return subprocess.run([sys.executable, "-m", "pyvmm", *args], capture_output=True,
                          timeout=timeout, env=ENV, stdin=subprocess.DEVNULL)


@pytest.fixture
def write_once(tmp_path):
    kernel = tmp_path / "write_once.bin"
    kernel.write_bytes(WRITE_ONCE)
    return str(kernel)


@pytest.mark.parametrize("call, name", [("execve", "execve"), ("socket", "socket"),
                                        ("create", "openat")])
def test_a_device_making_a_forbidden_call_ends_the_run_naming_it(write_once, tmp_path, call, name):
    created = tmp_path / "created"
    result = pyvmm("run", write_once, "--raw-mode", "real",
                   "--device", f"example_devices:Forbidden@0x560,call={call},path={created}")
    assert result.stderr.decode() == (f"pyvmm: error: seccomp: thread pyvmm-vcpu0 made a forbidden "
                                      f"system call {name}\n")
    assert result.returncode == 125
    assert not created.exists()


@pytest.mark.parametrize("call, name", [("socket", "socket"), ("create", "openat")])
def test_under_log_the_call_is_made_and_reported(write_once, tmp_path, call, name):
    created = tmp_path / "created"
    result = pyvmm("run", write_once, "--raw-mode", "real", "--seccomp", "log",
                   "--device", f"example_devices:Forbidden@0x560,call={call},path={created}")
    assert result.returncode == 1                       # the guest's own debug-exit 0
    assert (f"pyvmm: seccomp: thread pyvmm-vcpu0 (vcpu) made system call {name}, "
            "which --seccomp on refuses\n") in result.stderr.decode()
    assert created.exists() == (call == "create")


def test_under_log_even_execve_is_reported_and_the_new_program_stays_confined(write_once):
    result = pyvmm("run", write_once, "--raw-mode", "real", "--seccomp", "log",
                   "--device", "example_devices:Forbidden@0x560,call=execve")
    assert result.stderr.decode().startswith(
        "pyvmm: seccomp: thread pyvmm-vcpu0 (vcpu) made system call execve, which --seccomp on refuses\n")
    # A filter outlives execve and its listener is gone: /bin/true cannot even load libc.
    assert result.returncode == 127


def test_off_confines_nothing(write_once, tmp_path):
    created = tmp_path / "created"
    result = pyvmm("run", write_once, "--raw-mode", "real", "--seccomp", "off",
                   "--device", f"example_devices:Forbidden@0x560,call=create,path={created}")
    assert (result.returncode, result.stderr) == (1, b"")
    assert created.exists()


def thread_states(pid):
    """{thread name: (Seccomp, NoNewPrivs)} of a running process."""
    states = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/comm") as comm, \
                    open(f"/proc/{pid}/task/{tid}/status") as status:
                name = comm.read().strip()
                fields = dict(line.split(":\t", 1) for line in status.read().splitlines() if ":\t" in line)
        except FileNotFoundError:
            continue
        states[f"{name}/{tid}"] = (fields["Seccomp"].strip(), fields["NoNewPrivs"].strip())
    return states


@pytest.mark.parametrize("mode", ["on", "log"])
def test_every_thread_of_a_running_vm_is_confined_with_no_new_privs(mode):
    # gdb keeps the vCPU waiting; stdin stays open for the input thread; the
    # device brings a worker (which also watches its doorbell).
    process = subprocess.Popen(
        [sys.executable, "-m", "pyvmm", "run", "--gdb", "127.0.0.1:0", "--seccomp", mode,
         "--device", "example_devices:EveryThread@0x560-0x563"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=ENV)
    try:
        wanted = ("pyvmm-vcpu0", "pyvmm-gdb", "pyvmm-input", "pyvmm-dev-")
        deadline = time.monotonic() + 20
        while True:
            states = thread_states(process.pid)
            names = [name.split("/")[0] for name in states]
            every = all(any(name.startswith(prefix) for name in names) for prefix in wanted)
            if every and set(states.values()) == {("2", "1")}:
                break
            assert time.monotonic() < deadline, f"not every thread is confined: {states}"
            time.sleep(0.05)
        assert any(name.startswith("pyvmm-seccomp") for name in names)   # the listener too
    finally:
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=30)
    # The confined main thread unwound and closed the VM after SIGTERM.
    assert process.returncode == 128 + signal.SIGTERM
    assert stderr.decode().startswith("warning: waiting for gdb on 127.0.0.1:")
    assert "seccomp" not in stderr.decode()


def test_the_api_and_virtio_threads_are_confined_too(tmp_path):
    # The API server's thread; the workers of the virtio entropy, console and
    # block devices (file I/O on the image; their resampled interrupt lines).
    disk = tmp_path / "disk.img"
    disk.write_bytes(bytes(1 << 20))
    api = str(tmp_path / "api.sock")
    process = subprocess.Popen(
        [sys.executable, "-m", "pyvmm", "run", "--gdb", "127.0.0.1:0", "--api-socket", api, "--rng",
         "--console", "virtio", "--disk", f"path={disk}"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=ENV)
    try:
        deadline = time.monotonic() + 20
        while True:
            states = thread_states(process.pid)
            names = [name.split("/")[0] for name in states]     # comm: 15 characters
            every = "pyvmm-vcpu0" in names and "pyvmm-api" in names
            if every and set(states.values()) == {("2", "1")}:
                break
            assert time.monotonic() < deadline, f"not every thread is confined: {states}"
            time.sleep(0.05)
        # One worker per device: the empty slots (29 of them) start none.
        assert names.count("pyvmm-dev-virti") == 3
        from pyvmm.api.client import call
        from pyvmm.api import document
        assert call(api, document().by_command["ping"], None, timeout=10)[0] == 200
    finally:
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=30)
    assert process.returncode == 128 + signal.SIGTERM
    assert "seccomp" not in stderr.decode()
    assert not os.path.exists(api)          # the confined main thread removed it


@pytest.mark.parametrize("mode", ["on", "log"])
def test_a_written_disk_is_synced_by_the_confined_main_thread_as_the_vm_closes(tmp_path, mode):
    # virtio-blk.bin writes sectors 10-11 and ends with debug-exit 0.
    image = tmp_path / "disk.img"
    image.write_bytes(bytes(64 * 512))
    result = pyvmm("run", guests.path("virtio-blk.bin"), "--disk", f"path={image}", "--seccomp", mode,
                   "--serial", "null", timeout=120)
    assert (result.returncode, result.stderr) == (1, b"")
    assert image.read_bytes()[10 * 512:12 * 512] == bytes((0xA5 ^ i) & 0xFF for i in range(1024))


class WorkerOpens:
    """A device whose write asks its worker to open a file, and waits for it."""

    def __init__(self, path):
        self.path = path
        self.done = threading.Event()

    def attach(self, context):
        self.context = context

    def read(self, offset, size):
        return bytes(size)

    def write(self, offset, data):
        self.context.worker.call(self._open)
        self.done.wait(10)

    def _open(self):
        try:
            open(self.path, "w").close()
        finally:
            self.done.set()


def test_a_worker_making_a_forbidden_call_ends_the_run_naming_its_thread(tmp_path):
    config = VmConfig(kernel=str(tmp_path / "k"), raw_mode="real", serial="buffer", timeout=20,
                      seccomp="on")
    with Machine(config, WRITE_ONCE, LoadOptions(raw_mode="real")) as machine:
        machine.add_port_device(0x560, 1, WorkerOpens(tmp_path / "created"), name="opener")
        result = machine.run()
    assert (result.status, result.reason) == (125, "seccomp")
    assert result.message == "seccomp: thread pyvmm-dev-opener made a forbidden system call openat"
    assert not (tmp_path / "created").exists()


class StartsAThread:
    def read(self, offset, size):
        return bytes(size)

    def write(self, offset, data):
        threading.Thread(target=lambda: None).start()


def test_a_vcpu_thread_cannot_start_a_thread(tmp_path):
    config = VmConfig(kernel=str(tmp_path / "k"), raw_mode="real", serial="buffer", timeout=20,
                      seccomp="on")
    with Machine(config, WRITE_ONCE, LoadOptions(raw_mode="real")) as machine:
        machine.add_port_device(0x560, 1, StartsAThread())
        result = machine.run()
    assert result.message == "seccomp: thread pyvmm-vcpu0 made a forbidden system call clone3"


def task_count():
    return len(os.listdir("/proc/self/task"))


@pytest.mark.parametrize("mode", ["on", "log"])
def test_hundreds_of_sandboxed_vms_in_a_row_leak_nothing(mode):
    config = VmConfig(kernel=guests.path("hello.bin"), raw_mode="protected", serial="buffer",
                      seccomp=mode)
    with Machine(config) as machine:        # warm-up: lazy imports, the filters, the handlers
        machine.run()
    fds, tasks = len(os.listdir("/proc/self/fd")), task_count()
    for _ in range(300):
        with Machine(config) as machine:
            assert machine.run().status == 0
            assert machine.sandbox.events == []
    assert len(os.listdir("/proc/self/fd")) == fds       # the listener's fds closed too
    assert task_count() == tasks                         # and the listener thread ended


def test_a_refused_ioctl_names_the_request():
    class Ioctl:
        def read(self, offset, size):
            return bytes(size)

        def write(self, offset, data):
            from pyvmm._kvm import lib
            lib.pyvmm_ioctl_value(0, lib.KVM_CREATE_VM, 0)

    config = VmConfig(kernel="k", raw_mode="real", serial="buffer", timeout=20, seccomp="on")
    with Machine(config, WRITE_ONCE, LoadOptions(raw_mode="real")) as machine:
        machine.add_port_device(0x560, 1, Ioctl())
        result = machine.run()
    assert result.message.startswith("seccomp: thread pyvmm-vcpu0 made a forbidden system call "
                                     "ioctl (request 0xae01 KVM_CREATE_VM)")


def test_the_command_called_from_python_leaves_the_callers_thread_alone():
    from pyvmm import cli
    assert cli.main(["run", "--serial", "null"]) == 0
    with open("/proc/thread-self/status") as status:
        fields = dict(line.split(":\t", 1) for line in status.read().splitlines() if ":\t" in line)
    assert (fields["Seccomp"].strip(), fields["NoNewPrivs"].strip()) == ("0", "0")
