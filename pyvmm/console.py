"""Where the serial console's bytes go, and where its input comes from.

Console outputs buffer what the guest prints and are flushed by the
supervising thread (and at the end of a run), so a guest printing byte by
byte does not cost a syscall per byte. A broken pipe or full disk silences
the output instead of crashing the VMM.
"""

import os
import select
import threading


class ConsoleOutput:
    """Buffered output to a file descriptor; thread-safe."""

    def __init__(self, fd=None, close_fd=False):
        self.fd = fd
        self.close_fd = close_fd
        self.pending = bytearray()
        self.lock = threading.Lock()
        self.failed = None

    def write(self, data):
        with self.lock:
            self.pending += data

    def flush(self):
        with self.lock:
            data, self.pending = bytes(self.pending), bytearray()
        if self.fd is None or self.failed or not data:
            return
        view = memoryview(data)
        try:
            while view:
                view = view[os.write(self.fd, view):]
        except OSError as error:
            self.failed = error

    def close(self):
        self.flush()
        if self.close_fd and self.fd is not None:
            os.close(self.fd)
            self.fd = None


class BufferOutput(ConsoleOutput):
    """Keeps everything the guest wrote, for tests and the Python API."""

    def __init__(self):
        super().__init__()
        self.data = bytearray()

    def write(self, data):
        with self.lock:
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
