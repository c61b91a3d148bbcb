"""The seccomp sandbox (pyvmm.sandbox) without a VM: each role's filter on a
thread of its own, so that the test process itself is never confined."""

import errno
import mmap
import os
import signal
import socket
import threading

import pytest

from pyvmm._kvm import lib as kvm
from pyvmm._sandbox import lib
from pyvmm.sandbox import ROLES, Sandbox
from pyvmm.sandbox.roles import in_directory, ioctl_number
from pyvmm.sandbox.survey import summarize
from pyvmm.machine.vcpus import KICK_SIGNAL, install_kick_signal

THREAD_ROLES = [name for name in ROLES if name != "listener"]


class Confined:
    """A thread that enters `role` under `mode`, then runs the calls it is
    given one by one (each returns its outcome: a value or the OSError)."""

    def __init__(self, role, mode="on", name=None, extra=()):
        self.sandbox = Sandbox(mode, kick_signal=KICK_SIGNAL)
        self.role, self.extra = role, extra
        self.requests, self.replies = [], []
        self.ready = threading.Condition()
        self.thread = threading.Thread(target=self._serve, name=name or f"pyvmm-test-{role}")
        self.thread.start()

    def _serve(self):
        self.sandbox.enter(self.role, extra=self.extra)
        while True:
            with self.ready:
                while not self.requests:
                    self.ready.wait()
                call = self.requests.pop(0)
            if call is None:
                return
            try:
                reply = call()
            except (OSError, RuntimeError) as error:
                reply = error
            with self.ready:
                self.replies.append(reply)
                self.ready.notify_all()

    def __call__(self, call):
        with self.ready:
            self.requests.append(call)
            self.ready.notify_all()
            while not self.replies:
                assert self.ready.wait(10), "the confined thread did not answer"
            return self.replies.pop(0)

    @property
    def tid(self):
        return self.thread.native_id

    def close(self):
        with self.ready:
            self.requests.append(None)
            self.ready.notify_all()
        self.thread.join(10)
        self.sandbox.close()


@pytest.fixture
def confined():
    threads = []

    def make(role, mode="on", name=None, extra=()):
        threads.append(Confined(role, mode, name, extra))
        return threads[-1]
    yield make
    for thread in threads:
        thread.close()


def refused(outcome):
    return isinstance(outcome, OSError) and outcome.errno == errno.EPERM


def open_a_file():
    fd = os.open("/proc/self/cmdline", os.O_RDONLY | os.O_CLOEXEC)
    os.close(fd)
    return fd


def open_a_socket():
    socket.socket().close()


def start_a_program():
    os.execv("/bin/true", ["true"])


def start_a_thread():
    thread = threading.Thread(target=lambda: None)
    thread.start()
    thread.join()


@pytest.mark.parametrize("role", THREAD_ROLES)
def test_every_role_refuses_files_sockets_programs_and_threads_naming_the_call(confined, role):
    thread = confined(role)
    assert refused(thread(open_a_file))
    assert refused(thread(open_a_socket))
    assert refused(thread(start_a_program))
    outcome = thread(start_a_thread)
    assert isinstance(outcome, RuntimeError)            # can't start new thread
    assert thread.sandbox.poll() == f"seccomp: thread pyvmm-test-{role} made a forbidden system call openat"
    assert [event.call for event in thread.sandbox.events] == ["openat", "socket", "execve", "clone3"]
    assert all(event.refused and event.role == role for event in thread.sandbox.events)


@pytest.mark.parametrize("role", THREAD_ROLES)
def test_every_role_maps_no_executable_memory(confined, role):
    thread = confined(role)
    writable = thread(lambda: mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE))
    assert isinstance(writable, mmap.mmap)
    writable.close()
    assert refused(thread(lambda: mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_EXEC)))
    assert thread.sandbox.poll() == f"seccomp: thread pyvmm-test-{role} made a forbidden system call mmap"


def test_a_vcpu_thread_issues_only_its_own_ioctls(confined):
    read_end, write_end = os.pipe()
    try:
        thread = confined("vcpu")
        # KVM_RUN is allowed: the kernel itself answers that a pipe has no such ioctl.
        outcome = thread(lambda: kvm.pyvmm_ioctl_value(read_end, kvm.KVM_RUN, 0))
        assert outcome == -errno.ENOTTY
        assert thread(lambda: kvm.pyvmm_ioctl_value(read_end, kvm.KVM_CREATE_VM, 0)) == -errno.EPERM
        assert thread(lambda: os.write(write_end, b"x")) == 1     # eventfds, irqfds, pipes
        assert thread(lambda: os.read(read_end, 1)) == b"x"
        assert thread.sandbox.poll() == ("seccomp: thread pyvmm-test-vcpu made a forbidden system call "
                                         f"ioctl (request {kvm.KVM_CREATE_VM:#x} KVM_CREATE_VM)")
    finally:
        os.close(read_end)
        os.close(write_end)


@pytest.mark.parametrize("role", ["vcpu", "gdb", "supervisor", "api", "watchdog"])
def test_the_kick_is_the_only_signal_a_thread_may_send(confined, role):
    install_kick_signal()
    thread = confined(role)
    assert thread(lambda: signal.pthread_kill(thread.thread.ident, KICK_SIGNAL)) is None
    assert refused(thread(lambda: signal.pthread_kill(thread.thread.ident, signal.SIGWINCH)))
    assert thread.sandbox.poll().endswith("made a forbidden system call tgkill")


@pytest.mark.parametrize("role", ["device", "sleep", "console"])
def test_threads_that_kick_nobody_send_no_signal(confined, role):
    install_kick_signal()
    thread = confined(role)
    assert refused(thread(lambda: signal.pthread_kill(thread.thread.ident, KICK_SIGNAL)))


def test_a_device_worker_syncs_files_but_a_vcpu_thread_does_not(confined, tmp_path):
    image = os.open(tmp_path / "disk.img", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        worker, vcpu = confined("device"), confined("vcpu")
        for thread in (worker, vcpu):
            assert thread(lambda: os.pwrite(image, b"sector", 512)) == 6
            assert thread(lambda: os.pread(image, 6, 512)) == b"sector"
        assert worker(lambda: os.fsync(image)) is None
        assert refused(vcpu(lambda: os.fsync(image)))
    finally:
        os.close(image)


def test_a_confined_thread_shows_its_filter_and_no_new_privs(confined):
    thread = confined("vcpu")
    thread(lambda: None)
    with open(f"/proc/self/task/{thread.tid}/status") as status:
        fields = dict(line.split(":", 1) for line in status.read().splitlines())
    assert fields["Seccomp"].strip() == "2"
    assert fields["NoNewPrivs"].strip() == "1"
    with open(f"/proc/self/task/{thread.tid}/comm") as comm:
        assert comm.read().strip() == "pyvmm-test-vcpu"
    with open("/proc/thread-self/status") as status:
        assert "Seccomp:\t0" in status.read()      # the test's own thread is untouched


def test_off_confines_nothing(confined):
    thread = confined("vcpu", mode="off")
    assert isinstance(thread(open_a_file), int)
    with open(f"/proc/self/task/{thread.tid}/status") as status:
        assert "Seccomp:\t0" in status.read()
    assert thread.sandbox.poll() is None and thread.sandbox.events == []


def test_log_lets_the_call_through_and_reports_it_once(confined, capfd):
    fds = len(os.listdir("/proc/self/fd"))
    thread = confined("vcpu", mode="log")
    assert isinstance(thread(open_a_file), int)
    assert isinstance(thread(open_a_file), int)
    assert thread(lambda: kvm.pyvmm_ioctl_value(0, kvm.KVM_CREATE_VM, 0)) < 0   # made: not a KVM fd
    thread.close()
    assert thread.sandbox.poll() is None                 # nothing refused
    calls = [(event.call, event.refused) for event in thread.sandbox.events]
    assert calls == [("openat", False), ("ioctl", False)]
    err = capfd.readouterr().err
    assert err.count("pyvmm: seccomp: thread pyvmm-test-vcpu (vcpu) made system call openat, "
                     "which --seccomp on refuses\n") == 1
    assert f"made system call ioctl (request {kvm.KVM_CREATE_VM:#x})" in err
    # The listener let go of the thread's filter, and ended with nothing left to serve.
    assert not lib.pyvmm_sandbox_listening(0)
    assert len(os.listdir("/proc/self/fd")) == fds


def test_each_thread_reports_each_call_once_and_repeats_are_not_recorded(confined):
    thread = confined("vcpu")
    for _ in range(100):
        assert refused(thread(open_a_file))
    assert [event.call for event in (thread.sandbox.poll() and thread.sandbox.events)] == ["openat"]


def test_an_unknown_role_or_mode_is_refused():
    with pytest.raises(ValueError):
        Sandbox("maybe")
    with pytest.raises(ValueError):
        Sandbox("on").enter("janitor")


DANGEROUS = ("open", "openat", "openat2", "creat", "socket", "connect", "bind", "listen",
             "execve", "execveat", "fork", "vfork", "clone", "clone3", "ptrace", "kill",
             "process_vm_readv", "process_vm_writev", "mount", "unshare", "setns", "chmod",
             "unlink", "unlinkat", "rename", "memfd_create", "init_module", "bpf", "seccomp",
             "prctl", "personality", "io_uring_setup")


# The API thread writes snapshots where its client asks: new files only
# (openat with O_CREAT|O_EXCL), their temporary names removed.
SNAPSHOT_WRITER = {"api": ["openat", "unlink"]}


@pytest.mark.parametrize("role", list(ROLES))
def test_no_role_lists_a_call_that_leaves_the_sandbox(role):
    calls = ROLES[role].calls
    assert [call for call in DANGEROUS if calls.allows(call)] == SNAPSHOT_WRITER.get(role, [])


def test_the_api_thread_creates_new_files_but_opens_no_existing_one(confined, tmp_path):
    existing = tmp_path / "existing"
    existing.write_bytes(b"keep")
    thread = confined("api")

    def create(path, flags):
        return lambda: os.close(os.open(path, flags | os.O_CREAT | os.O_CLOEXEC, 0o600))
    assert thread(lambda: os.mkdir(tmp_path / "snapshot", 0o700)) is None
    new = tmp_path / "snapshot" / ".state.partial"
    assert thread(create(new, os.O_WRONLY | os.O_EXCL)) is None
    assert thread(lambda: os.link(new, tmp_path / "snapshot" / "state")) is None
    assert thread(lambda: os.unlink(new)) is None
    assert isinstance(thread(create(existing, os.O_WRONLY | os.O_EXCL)), FileExistsError)
    assert refused(thread(create(existing, os.O_WRONLY | os.O_TRUNC)))        # no O_EXCL
    assert refused(thread(lambda: os.open(existing, os.O_RDONLY | os.O_CLOEXEC)))
    assert refused(thread(lambda: os.open(existing, os.O_RDWR | os.O_CLOEXEC)))
    assert refused(thread(open_a_socket))
    assert existing.read_bytes() == b"keep"
    assert sorted(os.listdir(tmp_path / "snapshot")) == ["state"]


def test_every_listed_ioctl_has_a_number():
    for role in ROLES.values():
        for name in role.calls.ioctls:
            assert ioctl_number(name) > 0


def test_the_survey_marks_calls_outside_a_role():
    lines = ["vcpu ioctl 0xae80", "vcpu openat 0x0", "device fsync 0x0"]
    report = summarize(lines)
    assert "    ioctl KVM_RUN" in report
    assert "  + openat" in report
    assert "  + fsync" not in report and "    fsync" in report


def test_a_supervisor_removes_entries_of_its_consoles_directory_and_nowhere_else(confined, tmp_path):
    ours, elsewhere = tmp_path / "console", tmp_path / "other"
    ours.mkdir()
    elsewhere.mkdir()
    (ours / "serial.sock").write_text("")
    (elsewhere / "file").write_text("")
    directory = os.open(ours, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        thread = confined("supervisor", extra=in_directory(directory))
        assert thread(lambda: os.stat("serial.sock", dir_fd=directory, follow_symlinks=False)).st_size == 0
        assert thread(lambda: os.unlink("serial.sock", dir_fd=directory)) is None
        assert refused(thread(lambda: os.unlink(elsewhere / "file")))
        assert refused(thread(lambda: os.rmdir(ours)))
        assert not (ours / "serial.sock").exists() and (elsewhere / "file").exists()
    finally:
        os.close(directory)
