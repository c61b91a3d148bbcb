"""The API server: HTTP/1.1 with JSON bodies on a unix socket.

One thread (pyvmm-api) serves every connection through a selector, so a
client that is slow to send, or never reads its answer, holds up nobody:
each connection has REQUEST_DEADLINE seconds from its accept to send a
whole request (at most MAX_HEAD + MAX_BODY bytes, see http.py) and
WRITE_DEADLINE seconds to take the answer, and is dropped otherwise. At most
MAX_CONNECTIONS are open at once; the others wait in the listen backlog.
Requests are answered one at a time, in the order they complete; a
snapshot holds the others back while it is written. The vCPUs never wait
for the server: it only calls the machine's public API.

The socket is created with mode 0600 (bound in a private directory, then
linked into place), only when PATH does not exist or is a stale socket
(one nobody listens on); close() removes it if it is still ours.
"""

import errno
import os
import selectors
import socket
import stat
import tempfile
import threading
from time import monotonic

from .document import PREFIX, SchemaError, document
from .endpoints import HANDLERS
from .http import HttpError, error_response, json_body, parse_request, response

REQUEST_DEADLINE = 2.0
WRITE_DEADLINE = 2.0
# After an answer, the write side is shut and what the client still sends is
# read and dropped for this long (or until it closes): closing with unread
# data would reset the connection and lose the answer (a 413, say).
LINGER = 0.5
MAX_CONNECTIONS = 16
BACKLOG = 16
READ_CHUNK = 4096


class ApiSocketError(Exception):
    """The socket cannot be created at PATH; the message is for the user."""


def listen(path):
    """A listening unix socket at `path`, mode 0600 (see the module docstring)."""
    path = os.path.abspath(path)
    _clear_stale(path)
    parent = os.path.dirname(path)
    try:
        private = tempfile.mkdtemp(prefix=".pyvmm-api-", dir=parent)
    except OSError as error:
        raise ApiSocketError(f"--api-socket {path}: cannot create it in {parent}: {error.strerror}") from None
    staging = os.path.join(private, "s")
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    try:
        server.bind(staging)
        os.chmod(staging, 0o600)
        server.listen(BACKLOG)
        os.link(staging, path)            # fails, rather than replace, if PATH appeared meanwhile
    except OSError as error:
        server.close()
        reason = "it exists" if error.errno == errno.EEXIST else error.strerror or str(error)
        raise ApiSocketError(f"--api-socket {path}: cannot create the socket: {reason}") from None
    finally:
        for leftover in (staging,):
            try:
                os.unlink(leftover)
            except OSError:
                pass
        os.rmdir(private)
    server.setblocking(False)
    return server, path


def _clear_stale(path):
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return
    except OSError as error:
        raise ApiSocketError(f"--api-socket {path}: {error.strerror}") from None
    if not stat.S_ISSOCK(info.st_mode):
        raise ApiSocketError(f"--api-socket {path}: it exists and is not a socket")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    try:
        probe.settimeout(1.0)
        probe.connect(path)
    except ConnectionRefusedError:
        os.unlink(path)                   # stale: nobody listens on it
        return
    except OSError as error:
        raise ApiSocketError(f"--api-socket {path}: it exists and cannot be probed: {error.strerror}") from None
    finally:
        probe.close()
    raise ApiSocketError(f"--api-socket {path}: another process listens on it")


class Connection:
    __slots__ = ("sock", "deadline", "incoming", "outgoing", "lingering")

    def __init__(self, sock):
        self.sock = sock
        self.deadline = monotonic() + REQUEST_DEADLINE
        self.incoming = bytearray()
        self.outgoing = None                  # the answer being written, once there is one
        self.lingering = False                # answered: reading and dropping the rest


class ApiServer:
    """Serves the API for `machine` on the unix socket at `path` (made at
    construction: ApiSocketError if it cannot be); start() starts the thread,
    close() stops it and removes the socket."""

    def __init__(self, path, machine=None):
        document()                  # read now: the sandboxed thread opens no files (pyvmm.sandbox)
        self._listener, self.path = listen(path)
        # Removed at the end through its directory, opened now: a confined
        # caller may remove entries there and nowhere else (pyvmm.sandbox).
        try:
            self.directory = os.open(os.path.dirname(self.path), os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError as error:
            self._listener.close()
            os.unlink(self.path)
            raise ApiSocketError(f"--api-socket {self.path}: {error.strerror}") from None
        self._name = os.path.basename(self.path)
        self._inode = os.stat(self._name, dir_fd=self.directory, follow_symlinks=False).st_ino
        self.machine = machine
        self._selector = selectors.DefaultSelector()
        self._wake_read, self._wake_write = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        self._selector.register(self._wake_read, selectors.EVENT_READ)
        self._selector.register(self._listener, selectors.EVENT_READ)
        self._accepting = True
        self._connections = {}
        self._closing = False
        self._thread = None
        self.requests = 0                     # answered, for tests and counters

    def start(self, machine=None):
        if machine is not None:
            self.machine = machine
        self._thread = threading.Thread(target=self._serve, name="pyvmm-api", daemon=True)
        self._thread.start()
        return self

    # --- the loop ---------------------------------------------------------------------
    def _serve(self):
        sandbox = getattr(self.machine, "sandbox", None)
        if sandbox is not None and not sandbox.confine("api"):
            return
        while not self._closing:
            timeout = None
            if self._connections:
                timeout = max(0.0, min(c.deadline for c in self._connections.values()) - monotonic())
            for key, events in self._selector.select(timeout):
                if key.fileobj == self._wake_read:
                    try:
                        os.read(self._wake_read, 64)
                    except BlockingIOError:
                        pass
                elif key.fileobj is self._listener:
                    self._accept()
                else:
                    connection = self._connections.get(key.fileobj.fileno())
                    if connection is not None:
                        self._service(connection, events)
            now = monotonic()
            for connection in [c for c in self._connections.values() if c.deadline <= now]:
                self._drop(connection)

    def _accept(self):
        while len(self._connections) < MAX_CONNECTIONS:
            try:
                sock, _ = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError:                   # out of fds, say: try again later
                return
            sock.setblocking(False)
            connection = Connection(sock)
            self._connections[sock.fileno()] = connection
            self._selector.register(sock, selectors.EVENT_READ)
        if self._accepting:                   # full: the backlog holds the rest
            self._selector.unregister(self._listener)
            self._accepting = False

    def _service(self, connection, events):
        if connection.outgoing is not None and not connection.lingering:
            self._write(connection)
            return
        try:
            data = connection.sock.recv(READ_CHUNK)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._drop(connection)
            return
        if not data or connection.lingering:      # closed (before a whole request), or the rest
            if not data:
                self._drop(connection)
            return
        connection.incoming += data
        try:
            request = parse_request(connection.incoming)
            if request is None:
                return
            answer = self.handle(request)
        except HttpError as error:
            answer = error_response(error.status, error.reason, error.headers)
        except Exception as error:        # a pyvmm bug: answer it, keep serving
            answer = error_response(500, f"internal error: {type(error).__name__}: {error}")
        connection.outgoing = memoryview(answer)
        connection.deadline = monotonic() + WRITE_DEADLINE
        self._selector.modify(connection.sock, selectors.EVENT_WRITE)
        self._write(connection)

    def _write(self, connection):
        try:
            sent = connection.sock.send(connection.outgoing)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._drop(connection)
            return
        connection.outgoing = connection.outgoing[sent:]
        if not connection.outgoing:
            self.requests += 1
            try:
                connection.sock.shutdown(socket.SHUT_WR)
            except OSError:
                self._drop(connection)
                return
            connection.lingering = True
            connection.incoming = bytearray()
            connection.deadline = monotonic() + LINGER
            self._selector.modify(connection.sock, selectors.EVENT_READ)

    def _drop(self, connection):
        self._connections.pop(connection.sock.fileno(), None)
        try:
            self._selector.unregister(connection.sock)
        except (KeyError, ValueError):
            pass
        connection.sock.close()
        if not self._accepting and not self._closing:
            self._selector.register(self._listener, selectors.EVENT_READ)
            self._accepting = True

    # --- requests -----------------------------------------------------------------------
    def handle(self, request):
        """The response bytes for a complete request."""
        path = request.path
        if not path.startswith(PREFIX + "/"):
            raise HttpError(404, f"no such endpoint {path} (the API is under {PREFIX}/)")
        methods = document().by_path.get(path)
        if methods is None:
            raise HttpError(404, f"no such endpoint {path}")
        operation = methods.get(request.method)
        if operation is None:
            allowed = ", ".join(sorted(methods))
            raise HttpError(405, f"{path} takes {allowed}, not {request.method}", [("Allow", allowed)])
        body = json_body(request)
        try:
            operation.check_request(body)
        except SchemaError as error:
            raise HttpError(400, str(error)) from None
        status, payload = HANDLERS[operation.name](self.machine, body)
        return response(status, payload)

    # --- the end ------------------------------------------------------------------------
    def close(self):
        """Stops the thread, closes every connection and removes the socket."""
        if self._closing:
            return
        self._closing = True
        try:
            os.write(self._wake_write, b"x")
        except OSError:
            pass
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join()
        for connection in list(self._connections.values()):
            connection.sock.close()
        self._connections.clear()
        self._selector.close()
        self._listener.close()
        os.close(self._wake_read)
        os.close(self._wake_write)
        try:
            if os.stat(self._name, dir_fd=self.directory, follow_symlinks=False).st_ino == self._inode:
                os.unlink(self._name, dir_fd=self.directory)
        except OSError:
            pass
        os.close(self.directory)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
