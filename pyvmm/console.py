"""Where the serial console's bytes go, and where its input comes from.

Console output never blocks the VMM. The UART and the debug console append
what the guest prints to a backlog (any thread); the supervising thread
writes what the output takes, without waiting, every 50 ms; at the end of a
run the rest is written while the output keeps taking it. The backlog holds
at most BACKLOG_LIMIT bytes: what a guest prints beyond that while the
output is stalled (a pipe nobody reads, a terminal on hold) is dropped and
counted in `dropped`, and `pyvmm run` says so when the run ends. A broken
pipe or full disk silences the output instead of crashing the VMM.

Input comes from stdin (InputPump), whatever the output is, except for the
back-ends that carry it themselves: a pseudo-terminal (PtyConsole) and a
unix socket a user attaches to (SocketConsole).
"""

import fcntl
import os
import select
import stat
import struct
import termios
import threading
import time
import tty

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
        if stat.S_ISREG(os.fstat(fd).st_mode) or fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_NONBLOCK:
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

    carries_input = False       # True: the back-end brings the console's input (start_input)
    where = None                # what `pyvmm run` names for a user to attach to
    drop_reason = "the output did not take them in time"

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
                    if self.failed:
                        self.pending.clear()
                    chunk = bytes(self.pending[:WRITE_CHUNK])
                if not chunk:
                    return True
                if self.fd is None:
                    return False                # nowhere to write now (a socket with no client)
                try:
                    written = os.write(self.fd, chunk)
                except BlockingIOError:
                    return False
                except OSError as error:
                    written = self._write_failed(error, len(chunk))
                with self.lock:
                    del self.pending[:written]

    def _write_failed(self, error, size):
        """A broken pipe or full disk silences the output; how much of the chunk is gone."""
        self.failed = error
        return size

    def finish(self, patience=FINAL_PATIENCE):
        """Writes the rest, waiting while the output takes it; drops (and
        counts) what it has not taken after `patience` s without progress."""
        deadline = time.monotonic() + patience
        while not self.flush():
            fd, left = self.fd, len(self.pending)
            if fd is None:                                  # nobody to take it
                self._drop_pending()
                return
            try:
                select.select([], [fd], [], 0.1)            # room, or a tenth of a second
            except (OSError, ValueError):
                pass                                        # closed meanwhile: flush() says so
            if self.flush():
                return
            if len(self.pending) < left:
                deadline = time.monotonic() + patience
            elif time.monotonic() > deadline:
                self._drop_pending()
                return

    def _drop_pending(self):
        with self.lock:
            self.dropped += len(self.pending)
            self.pending.clear()

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


class PtyConsole(ConsoleOutput):
    """`--serial pty`: a pseudo-terminal a user opens (`screen`, `picocom`,
    `cat`); its path is `where`. It is raw, as QEMU makes it: no echo, no
    line editing, bytes pass unchanged both ways.

    pyvmm holds both ends, so the terminal outlives any client: output
    waits in the terminal's own buffer, then in the backlog (dropped past
    BACKLOG_LIMIT), for whoever opens it next, and a client may leave and
    come back. Input is what clients type. A terminal discards what it
    holds when it closes, so the end of a run waits, as for any output,
    while a client is still reading it (finish()).
    """

    carries_input = True

    def __init__(self, limit=BACKLOG_LIMIT):
        controller, terminal = os.openpty()
        try:
            tty.setraw(terminal)
            self.where = os.ttyname(terminal)
            os.set_blocking(controller, False)
        except OSError:
            os.close(controller)
            os.close(terminal)
            raise
        super().__init__(controller, close_fd=True, limit=limit)
        self._terminal = terminal
        self._input = None

    def start_input(self, feed, sandbox=None):
        self._input = InputPump(self.fd, feed, sandbox).start()

    def stop_input(self):
        if self._input is not None:
            self._input.stop()
            self._input = None

    def finish(self, patience=FINAL_PATIENCE):
        super().finish(patience)
        if self._terminal is None:
            return
        deadline, left, quiet = time.monotonic() + patience, self._unread(), 0
        while quiet < 2:                    # twice empty: the kernel moved nothing in between
            time.sleep(0.02)
            now = self._unread()
            quiet = quiet + 1 if now == 0 else 0
            if now < left:
                deadline = time.monotonic() + patience
            elif now and time.monotonic() > deadline:
                with self.lock:
                    self.dropped += now     # nobody reads it: lost when the terminal closes
                return
            left = now

    def _unread(self):
        """Bytes the terminal holds that no client has read yet."""
        try:
            return struct.unpack("i", fcntl.ioctl(self._terminal, termios.FIONREAD, b"\0" * 4))[0]
        except OSError:
            return 0

    def close(self):
        self.stop_input()
        super().close()
        if self._terminal is not None:
            os.close(self._terminal)
            self._terminal = None


class SocketConsole(ConsoleOutput):
    """`--serial socket=PATH`: a unix socket a user attaches to
    (`socat -,raw,echo=0 UNIX-CONNECT:PATH`), as Cloud Hypervisor's.

    pyvmm creates the socket (an existing PATH is refused, never replaced)
    and removes it at the end. One client at a time: the next waits until
    the current one leaves. Input is what the client sends. While no client
    is attached, output waits in the backlog (dropped past BACKLOG_LIMIT)
    and the next client gets it first; a client leaving changes nothing
    for the guest. Writes to a client never wait: one that does not read
    is treated as a stalled output. What is left at the end of the run is
    dropped (and counted) when no client is attached.
    """

    carries_input = True

    def __init__(self, path, limit=BACKLOG_LIMIT):
        import socket       # only a run with a socket console pays for the import
        super().__init__(None, limit=limit)
        self.where = path
        self._shutdown = socket.SHUT_RDWR
        # The socket is removed at the end through its directory, opened now:
        # the sandbox lets the thread that closes the console remove and stat
        # entries there and nowhere else (pyvmm.sandbox.roles.in_directory).
        self.directory = os.open(os.path.dirname(os.path.abspath(path)),
                                 os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        self._name = os.path.basename(path)
        self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        try:
            self._listener.bind(path)                   # EADDRINUSE if PATH exists
            self._identity = _identity(os.stat(self._name, dir_fd=self.directory, follow_symlinks=False))
            self._listener.listen(1)
        except OSError:
            self._listener.close()
            os.close(self.directory)
            raise
        self._client = None
        self._feed = None
        self._sandbox = None
        self._thread = None
        self._wake_read, self._wake_write = os.pipe2(os.O_CLOEXEC)

    def start_input(self, feed, sandbox=None):
        self._feed, self._sandbox = feed, sandbox
        self._thread = threading.Thread(target=self._serve, name="pyvmm-console", daemon=True)
        self._thread.start()

    def _serve(self):
        """Accepts a client when none is attached, else feeds what it sends."""
        if self._sandbox is not None and not self._sandbox.confine("console"):
            return
        while True:
            client = self._client
            try:
                ready = select.select([self._wake_read, client or self._listener], [], [])[0]
            except (OSError, ValueError):
                return
            if self._wake_read in ready:
                return
            if client is None:
                try:
                    connection, _ = self._listener.accept()
                except OSError:             # e.g. out of fds: try again a little later
                    select.select([self._wake_read], [], [], 0.1)
                    continue
                connection.setblocking(False)
                with self._flushing:
                    self._client, self.fd = connection, connection.fileno()
                continue
            try:
                data = client.recv(4096)
            except BlockingIOError:
                continue
            except OSError:
                data = b""
            if data:
                self._feed(data)
            else:
                self._detach(client)        # the client left: wait for the next one

    def _write_failed(self, error, size):
        # The client left (EPIPE, ECONNRESET): the chunk waits for the next
        # one; _serve sees the end of the connection and closes it.
        self.fd = None
        try:
            self._client.shutdown(self._shutdown)
        except OSError:
            pass
        return 0

    def _detach(self, client):
        with self._flushing:
            if self._client is client:
                self._client, self.fd = None, None
        client.close()

    def stop_input(self):
        if self._thread is not None:
            os.write(self._wake_write, b"x")
            self._thread.join()
            self._thread = None

    def close(self):
        if self._listener is None:
            return
        self.stop_input()
        self.finish()
        if self._client is not None:
            self._detach(self._client)
        self._listener.close()
        self._listener = None
        try:                                # remove it only if it is still ours
            if _identity(os.stat(self._name, dir_fd=self.directory, follow_symlinks=False)) == self._identity:
                os.unlink(self._name, dir_fd=self.directory)
        except OSError:
            pass
        os.close(self.directory)
        os.close(self._wake_read)
        os.close(self._wake_write)

    def finish(self, patience=FINAL_PATIENCE):
        if self.fd is None and self.pending:
            self.drop_reason = "no client was attached to the serial socket"
        super().finish(patience)


def _identity(status):
    return status.st_dev, status.st_ino


SERIAL_CHOICES = "stdio, null, file:PATH, pty or socket=PATH"


def open_output(spec):
    """The console for a --serial value: stdio, null, file:PATH, pty, socket=PATH or buffer."""
    if spec == "stdio":
        return ConsoleOutput(1)
    if spec == "null":
        return NullOutput()
    if spec == "buffer":
        return BufferOutput()
    if spec == "pty":
        return PtyConsole()
    if spec.startswith("socket=") and len(spec) > 7:
        return SocketConsole(spec[7:])
    if spec.startswith("file:") and len(spec) > 5:
        fd = os.open(spec[5:], os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
        return ConsoleOutput(fd, close_fd=True)
    raise ValueError(f"unknown serial output {spec!r} (use {SERIAL_CHOICES})")


class InputPump:
    """A thread copying bytes from an fd (stdin) into a device's feed().

    It waits on the fd and on a wake-up pipe, so stop() ends it promptly
    even when no input ever arrives. With a `sandbox` the thread confines
    itself to the console role first.
    """

    def __init__(self, fd, feed, sandbox=None):
        self.fd = fd
        self.feed = feed
        self.sandbox = sandbox
        self._wake_read, self._wake_write = os.pipe2(os.O_CLOEXEC)
        self.thread = threading.Thread(target=self._pump, name="pyvmm-input", daemon=True)

    def start(self):
        self.thread.start()
        return self

    def _pump(self):
        if self.sandbox is not None and not self.sandbox.confine("console"):
            return
        while True:
            try:
                ready, _, _ = select.select([self.fd, self._wake_read], [], [])
                if self._wake_read in ready:
                    return
                data = os.read(self.fd, 4096)
            except BlockingIOError:
                continue
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
