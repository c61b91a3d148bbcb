"""Sandbox: confines a machine's threads one by one and hears what they were refused."""

import atexit
import codecs
import os
import sys
import termios
import threading
import weakref
from time import monotonic, sleep

from .._sandbox import ffi, lib
from . import filters
from .roles import ROLES, WORD

MODES = ("on", "log", "off")
# A file to append every call of every confined thread to, as "ROLE CALL":
# how the lists of pyvmm.sandbox.roles are derived (see pyvmm.sandbox.survey).
SURVEY_ENV = "PYVMM_SECCOMP_SURVEY"
CLOSE_WAIT = 1.0        # seconds close() waits for the listener to let go
_trap_lock = threading.Lock()
_trap_installed = False


class SandboxError(Exception):
    """The sandbox cannot confine a thread as asked; the message is for the user."""


class SeccompEvent:
    """One call a confined thread made outside its role's list."""

    __slots__ = ("thread", "role", "call", "detail", "refused")

    def __init__(self, thread, role, call, detail, refused):
        self.thread, self.role, self.call, self.detail, self.refused = thread, role, call, detail, refused

    @property
    def what(self):
        """The call, with its request for ioctl and fcntl."""
        if self.call == "ioctl":
            name = request_names().get(self.detail & WORD)
            return f"ioctl (request {self.detail & WORD:#x}{' ' + name if name else ''})"
        if self.call == "fcntl":
            return f"fcntl (command {self.detail})"
        return self.call

    def message(self):
        if self.refused:
            return f"seccomp: thread {self.thread} made a forbidden system call {self.what}"
        return (f"seccomp: thread {self.thread} ({self.role}) made system call {self.what}, "
                f"which --seccomp on refuses")

    def __repr__(self):
        return f"SeccompEvent({self.message()!r})"


def request_names():
    """Request number -> name, for the ioctls pyvmm knows (KVM's, the terminal's)."""
    global _request_names
    if _request_names is None:
        names = {}
        for source, prefixes in ((lib, ("KVM_", "SECCOMP_IOCTL_")), (termios, ("TC", "TIOC", "FIO"))):
            for name in dir(source):
                value = getattr(source, name)
                if name.startswith(prefixes) and isinstance(value, int) and value > 0xFF:
                    names.setdefault(value & WORD, name)
        _request_names = names
    return _request_names


_request_names = None
_survey_files = {}
_surveyed = weakref.WeakSet()


def _survey_file(path):
    """The survey's record, opened once per process, before any thread is
    confined: writing to it makes no call the survey would see."""
    if path not in _survey_files:
        _survey_files[path] = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
        atexit.register(lambda: [sandbox.poll() for sandbox in list(_surveyed)])
    return _survey_files[path]


# Codecs the interpreter imports on first use (json.loads of bytes picks
# UTF-16 or UTF-32 from the first bytes; a device may decode text): looked
# up before any thread is confined, since importing opens files.
WARM_CODECS = ("utf-8", "utf-8-sig", "utf-16", "utf-16-le", "utf-16-be", "utf-32", "utf-32-le",
               "utf-32-be", "latin-1", "ascii")


def _prepare_process():
    """Once per process, before any thread is confined: the SIGSYS handler,
    and the codecs a confined thread could not import."""
    global _trap_installed
    with _trap_lock:
        if not _trap_installed:
            error = lib.pyvmm_sandbox_install_trap()
            if error < 0:
                raise SandboxError(f"seccomp: cannot install the SIGSYS handler: {os.strerror(-error)}")
            for name in WARM_CODECS:
                codecs.lookup(name)
            _trap_installed = True


class Sandbox:
    """The seccomp sandbox of one machine (see pyvmm.sandbox).

    `mode`: on (a call outside a thread's list fails with EPERM and ends the
    run), log (it goes through, and the listener says so on stderr at
    once), off. `kick_signal`: the signal pyvmm's threads may send each
    other. `events` keeps every call polled, refused or let through.
    """

    def __init__(self, mode="on", kick_signal=0):
        if mode not in MODES:
            raise ValueError(f"unknown seccomp mode {mode!r} (use on, log or off)")
        self.mode = mode
        self.events = []                # SeccompEvent, in the order polled
        self.refusal = None             # message of the first refused call
        self._threads = {}              # native thread id -> (name, role)
        self._entered = []              # (native id, Thread) of each confined thread
        self._lock = threading.Lock()
        self._cursor = lib.pyvmm_sandbox_event_count()
        self._params = (os.getpid(), int(kick_signal))
        self._action = None
        self._listen = 0                # how the listener answers (0: no listener)
        self._survey = None
        survey = os.environ.get(SURVEY_ENV) if mode != "off" else None
        if mode == "off":
            return
        if "trap" not in filters.kernel_actions():
            raise SandboxError("seccomp: this kernel has no seccomp filters "
                               "(--seccomp off runs without the sandbox)")
        # With user notification the listener answers every call outside a
        # list: refused with EPERM (on) or let through (log). Without, on
        # traps (SIGSYS) and log is the kernel's SCMP_ACT_LOG.
        notify = filters.user_notification()
        if notify:
            self._action = "notify"
            self._listen = lib.PYVMM_SANDBOX_REFUSE if mode == "on" else lib.PYVMM_SANDBOX_CONTINUE
        else:
            self._action = "trap" if mode == "on" else "log"
        if survey:
            if not notify:
                raise SandboxError(f"seccomp: {SURVEY_ENV} needs seccomp user notification")
            self._listen = lib.PYVMM_SANDBOX_CONTINUE
            self._survey = _survey_file(survey)
            _surveyed.add(self)
        _prepare_process()
        for role in ROLES:              # a role's mistake shows here, not in a thread
            filters.program(role, self._action, *self._params)
        if self._action == "log":
            print("pyvmm: seccomp: this kernel cannot hand calls to pyvmm; calls outside a "
                  "thread's list are in the kernel's log (dmesg or the audit log, type=SECCOMP)",
                  file=sys.stderr, flush=True)

    def enter(self, role, name=None, extra=()):
        """Confines the calling thread to `role` (a key of roles.ROLES), for the
        rest of its life; threads it creates afterwards inherit the filter.
        Call it first in the thread's target, before the thread does
        anything else. `name` (default: the thread's) names it in reports;
        `extra` adds rules for this thread only (e.g. roles.in_directory)."""
        if role not in ROLES or role == "listener":
            raise ValueError(f"unknown thread role {role!r}")
        if self.mode == "off":
            return
        thread = threading.current_thread()
        name = name or thread.name
        if self._survey is not None:
            code = filters.program("survey", self._action, *self._params)
        else:
            code = filters.program(role, self._action, *self._params, tuple(extra))
        tid = threading.get_native_id()
        with self._lock:
            self._threads[tid] = (name, role)
            self._entered.append((tid, thread))
        if name.startswith("pyvmm-"):
            lib.pyvmm_sandbox_name_thread(name.encode()[:15])
        if self._listen:
            listener = filters.program("listener", "trap", *self._params)
            error = lib.pyvmm_sandbox_prepare_listener(ffi.from_buffer(listener),
                                                       len(listener) // filters.INSTRUCTION_SIZE)
            if error < 0:
                self._failed(f"seccomp: cannot start the listener thread: {os.strerror(-error)}")
        label = b"" if self._survey is not None else f"{name} ({role})".encode()
        error = lib.pyvmm_sandbox_load(ffi.from_buffer(code), len(code) // filters.INSTRUCTION_SIZE,
                                       self._listen, label)
        if error < 0:
            self._failed(f"seccomp: cannot confine thread {name}: {os.strerror(-error)}")

    def confine(self, role):
        """enter(role) for a thread that simply ends when it cannot be
        confined: False then (the sandbox has recorded why, and the run ends)."""
        try:
            self.enter(role)
        except SandboxError:
            return False
        return True

    def _failed(self, message):
        """A thread that could not be confined must not run: the run ends."""
        with self._lock:
            if self.refusal is None:
                self.refusal = message
        raise SandboxError(message)

    def poll(self):
        """Reads the calls this sandbox's threads made outside their lists
        since the last poll into `events`, and returns the message of the
        first one refused (or of a thread that could not be confined), else
        None. Cheap: the supervisor calls it at every flush."""
        if self.mode == "off":
            return None
        with self._lock:
            end = lib.pyvmm_sandbox_event_count()
            if self._cursor == end:
                return self.refusal
            event = ffi.new("struct pyvmm_sandbox_event *")
            new = []
            while self._cursor < end:
                found = lib.pyvmm_sandbox_event(self._cursor, event)
                if found == 0:
                    break                   # still being written: next time
                self._cursor += 1
                owner = self._threads.get(event.tid) if found > 0 else None
                if owner is None:
                    continue                # another machine's thread, or overwritten
                record = SeccompEvent(owner[0], owner[1], filters.syscall_name(event.nr),
                                      event.detail, bool(event.refused))
                self.events.append(record)
                new.append(record)
                if record.refused and self.refusal is None:
                    self.refusal = record.message()
        if self._survey is not None:
            self._append_survey(new)
        return self.refusal

    def _append_survey(self, records):
        if records:
            os.write(self._survey, "".join(f"{record.role} {record.call} {record.detail:#x}\n"
                                           for record in records).encode())

    def close(self):
        """Reads what is left, and waits (at most CLOSE_WAIT) until the
        listener has let go of the filters of this sandbox's ended threads,
        so that their fds are closed when the machine is."""
        self.poll()
        if not self._listen:
            return
        deadline = monotonic() + CLOSE_WAIT
        with self._lock:
            ended = [tid for tid, thread in self._entered if not thread.is_alive()]
        for tid in ended:
            while lib.pyvmm_sandbox_listening(tid) and monotonic() < deadline:
                sleep(0.001)
        while (lib.pyvmm_sandbox_listened() == 0 and lib.pyvmm_sandbox_listening(0)
               and monotonic() < deadline):
            sleep(0.001)                # the listener ends with nothing left to serve
