"""Where the serial console's bytes go, and where its input comes from.

Console output never blocks the VMM. The UART and the debug console append
what the guest prints to a backlog (any thread); the supervising thread
writes what the output takes, without waiting, every 50 ms; at the end of a
run the rest is written while the output keeps taking it. The backlog holds
at most BACKLOG_LIMIT bytes: what a guest prints beyond that while the
output is stalled (a pipe nobody reads, a terminal on hold) is dropped and
counted in `dropped`, and `pyvmm run` says so when the run ends. A broken
pipe or full disk silences the output instead of crashing the VMM.
"""

import fcntl
import os
import select
import stat
import threading
import time

BACKLOG_LIMIT = 1 << 20          # bytes waiting for a stalled output
WRITE_CHUNK = 1 << 16
FINAL_PATIENCE = 1.0             # seconds without progress before the rest is dropped
BUFFER_LIMIT = 64 << 20          # what serial="buffer" keeps


def _nonblocking(fd):
    """(fd to write to without blocking, whether it is ours to close, flags to restore).

    A regular file never holds a writer up: it is used as it is. A pipe, FIFO
    or terminal is opened again through /proc (a file description of our
    own, so O_NONBLOCK does not leak to the shell sharing the original);
    failing that (a socket), O_NONBLOCK is set on the original until close."""
    try:
        if stat.S_ISREG(os.fstat(fd).st_mode):
            return fd, False, None
    except OSError:
        return fd, False, None              # closed: writes fail and silence the output
    try:
        return os.open(f"/proc/self/fd/{fd}", os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY), True, None
    except OSError:
        flags = fcntl.fcntl(fd, fcntl.F_GETFL)
        fcntl.fcntl(fd, fcntl.F_SETFL, flags | os.O_NONBLOCK)
        return fd, False, flags


class ConsoleOutput:
    """Output to a file descriptor that never blocks the VMM (see the module docstring)."""

    def __init__(self, fd=None, close_fd=False, limit=BACKLOG_LIMIT):
        self.fd, self.close_fd, self._restore_flags = fd, close_fd, None
        if fd is not None:
            self.fd, owned, self._restore_flags = _nonblocking(fd)
            if owned and close_fd:
                os.close(fd)                # the reopened one is all we need
            self.close_fd = close_fd or owned
        self.pending = bytearray()
        self.limit = limit
        self.dropped = 0
        self.lock = threading.Lock()        # appends and removals of `pending`
        self._flushing = threading.Lock()   # one writer at a time
        self.failed = None

    def write(self, data):
        with self.lock:
            room = self.limit - len(self.pending)
            if len(data) > room:
                self.dropped += len(data) - max(room, 0)
                data = data[:max(room, 0)]
            self.pending += data

    def flush(self):
        """Writes what the output takes now; never waits. True when nothing is left."""
        with self._flushing:
            while True:
                with self.lock:
                    if self.fd is None or self.failed:
                        self.pending.clear()
                    chunk = bytes(self.pending[:WRITE_CHUNK])
                if not chunk:
                    return True
                try:
                    written = os.write(self.fd, chunk)
                except BlockingIOError:
                    return False
                except OSError as error:
                    self.failed = error
                    written = len(chunk)
                with self.lock:
                    del self.pending[:written]

    def finish(self, patience=FINAL_PATIENCE):
        """Writes the rest, waiting while the output takes it; drops (and
        counts) what it has not taken after `patience` s without progress."""
        deadline = time.monotonic() + patience
        while not self.flush():
            left = len(self.pending)
            select.select([], [self.fd], [], 0.1)           # room, or a tenth of a second
            if self.flush():
                return
            if len(self.pending) < left:
                deadline = time.monotonic() + patience
            elif time.monotonic() > deadline:
                with self.lock:
                    self.dropped += len(self.pending)
                    self.pending.clear()
                return

    def close(self):
        if self.fd is None:
            return
        self.finish()
        if self._restore_flags is not None:
            fcntl.fcntl(self.fd, fcntl.F_SETFL, self._restore_flags)
        if self.close_fd:
            os.close(self.fd)
        self.fd = None


class BufferOutput(ConsoleOutput):
    """Keeps everything the guest wrote (up to BUFFER_LIMIT), for tests and the Python API."""

    def __init__(self, limit=BUFFER_LIMIT):
        super().__init__(limit=limit)
        self.data = bytearray()

    def write(self, data):
        with self.lock:
            room = self.limit - len(self.data)
            if len(data) > room:
                self.dropped += len(data) - max(room, 0)
                data = data[:max(room, 0)]
            self.data += data


class NullOutput(ConsoleOutput):
    def write(self, data):
        pass


def open_output(spec):
    """The console output for a --serial value: stdio, null, file:PATH or buffer."""
    if spec == "stdio":
        return ConsoleOutput(1)
    if spec == "null":
        return NullOutput()
    if spec == "buffer":
        return BufferOutput()
    if spec.startswith("file:") and len(spec) > 5:
        fd = os.open(spec[5:], os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
        return ConsoleOutput(fd, close_fd=True)
    raise ValueError(f"unknown serial output {spec!r} (use stdio, null or file:PATH)")


class InputPump:
    """A thread copying bytes from an fd (stdin) into a device's feed().

    It waits on the fd and on a wake-up pipe, so stop() ends it promptly
    even when no input ever arrives.
    """

    def __init__(self, fd, feed):
        self.fd = fd
        self.feed = feed
        self._wake_read, self._wake_write = os.pipe2(os.O_CLOEXEC)
        self.thread = threading.Thread(target=self._pump, name="pyvmm-input", daemon=True)

    def start(self):
        self.thread.start()
        return self

    def _pump(self):
        while True:
            try:
                ready, _, _ = select.select([self.fd, self._wake_read], [], [])
                if self._wake_read in ready:
                    return
                data = os.read(self.fd, 4096)
            except (OSError, ValueError):
                return
            if not data:
                return
            self.feed(data)

    def stop(self):
        os.write(self._wake_write, b"x")
        if self.thread.ident is not None:
            self.thread.join()
        os.close(self._wake_read)
        os.close(self._wake_write)
