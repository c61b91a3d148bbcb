"""The console back-ends that carry their own input: a pseudo-terminal and a
unix socket. Output never waits for a reader; input reaches feed()."""

import os
import select
import socket
import threading
import time

import pytest

from pyvmm.console import PtyConsole, SocketConsole, open_output


class Feed:
    def __init__(self):
        self.data = bytearray()
        self.changed = threading.Condition()

    def __call__(self, data):
        with self.changed:
            self.data += data
            self.changed.notify_all()

    def wait_for(self, expected, timeout=10):
        with self.changed:
            assert self.changed.wait_for(lambda: bytes(self.data) == expected, timeout), bytes(self.data)


def read_until(fd_or_socket, expected, timeout=10):
    received = b""
    deadline = time.monotonic() + timeout
    while len(received) < len(expected) and time.monotonic() < deadline:
        if select.select([fd_or_socket], [], [], 0.1)[0]:
            chunk = (fd_or_socket.recv(4096) if isinstance(fd_or_socket, socket.socket)
                     else os.read(fd_or_socket, 4096))
            if not chunk:
                break
            received += chunk
    return received


def flush_until_empty(console, timeout=10):
    deadline = time.monotonic() + timeout
    while not console.flush():
        assert time.monotonic() < deadline
        time.sleep(0.01)


# --- pty ---------------------------------------------------------------------------

def test_pty_passes_bytes_unchanged_both_ways_without_echo():
    console = open_output("pty")
    feed = Feed()
    console.start_input(feed)
    terminal = os.open(console.where, os.O_RDWR | os.O_NOCTTY)
    try:
        assert console.carries_input and console.where.startswith("/dev/pts/")
        console.write(b"line\n\x00\xff")
        flush_until_empty(console)
        assert read_until(terminal, b"line\n\x00\xff") == b"line\n\x00\xff"     # no \r added
        os.write(terminal, b"typed\r\x03")
        feed.wait_for(b"typed\r\x03")                   # no line editing, no signals
        assert not select.select([terminal], [], [], 0.2)[0]                    # no echo
    finally:
        os.close(terminal)
        console.close()


def test_pty_survives_a_client_leaving_and_keeps_output_for_the_next():
    console = PtyConsole()
    try:
        first = os.open(console.where, os.O_RDWR | os.O_NOCTTY)
        console.write(b"one ")
        flush_until_empty(console)
        assert read_until(first, b"one ") == b"one "
        os.close(first)
        console.write(b"two")
        flush_until_empty(console)                       # nobody reading: the terminal holds it
        second = os.open(console.where, os.O_RDWR | os.O_NOCTTY)
        assert read_until(second, b"two") == b"two"
        os.close(second)
    finally:
        console.close()


def test_pty_nobody_reads_never_blocks_and_counts_what_it_drops():
    console = PtyConsole(limit=64 << 10)
    try:
        started = time.monotonic()
        for _ in range(64):
            console.write(b"x" * 65536)
            console.flush()
        console.finish(patience=0.2)
        assert time.monotonic() - started < 5
        assert console.dropped > 2 << 20
    finally:
        console.close()


def test_pty_is_gone_after_close():
    console = PtyConsole()
    path = console.where
    console.close()
    with pytest.raises(OSError):
        os.open(path, os.O_RDWR | os.O_NOCTTY)


# --- unix socket ---------------------------------------------------------------------

@pytest.fixture
def socket_path(tmp_path):
    return str(tmp_path / "console.sock")


def connect(path):
    client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    client.connect(path)
    return client


def wait_attached(console, timeout=10):
    deadline = time.monotonic() + timeout
    while console.fd is None:
        assert time.monotonic() < deadline, "the client was not attached"
        time.sleep(0.01)


def test_socket_output_waits_for_a_client_then_both_directions_work(socket_path):
    console = open_output(f"socket={socket_path}")
    feed = Feed()
    console.start_input(feed)
    try:
        assert console.carries_input and console.where == socket_path
        console.write(b"before any client\n")
        assert not console.flush()                      # kept, not thrown away
        client = connect(socket_path)
        wait_attached(console)
        console.write(b"after\n")
        flush_until_empty(console)
        assert read_until(client, b"before any client\nafter\n") == b"before any client\nafter\n"
        client.sendall(b"input\x04")
        feed.wait_for(b"input\x04")
        client.close()
    finally:
        console.close()
    assert not os.path.exists(socket_path)


def test_socket_client_leaving_lets_the_next_one_attach_and_get_the_output(socket_path):
    console = SocketConsole(socket_path)
    feed = Feed()
    console.start_input(feed)
    try:
        first = connect(socket_path)
        wait_attached(console)
        first.sendall(b"a")
        feed.wait_for(b"a")
        first.close()
        deadline = time.monotonic() + 10
        while console.fd is not None:                   # its end is seen: detached
            assert time.monotonic() < deadline
            time.sleep(0.01)
        console.write(b"while nobody is there")
        console.flush()
        second = connect(socket_path)
        wait_attached(console)
        flush_until_empty(console)
        assert read_until(second, b"while nobody is there") == b"while nobody is there"
        second.sendall(b"b")
        feed.wait_for(b"ab")
        second.close()
    finally:
        console.close()


def test_socket_client_that_never_reads_does_not_block_the_output(socket_path):
    console = SocketConsole(socket_path, limit=64 << 10)
    console.start_input(Feed())
    client = connect(socket_path)
    try:
        wait_attached(console)
        started = time.monotonic()
        for _ in range(64):
            console.write(b"y" * 65536)
            console.flush()
        console.finish(patience=0.2)
        assert time.monotonic() - started < 5
        assert console.dropped > 2 << 20
    finally:
        client.close()
        console.close()


def test_socket_with_no_client_at_the_end_drops_and_says_why(socket_path):
    console = SocketConsole(socket_path)
    console.write(b"x" * 100)
    console.close()
    assert console.dropped == 100
    assert "no client" in console.drop_reason


def test_socket_refuses_an_existing_path_and_leaves_it_alone(tmp_path):
    existing = tmp_path / "notes.txt"
    existing.write_text("keep me")
    with pytest.raises(OSError):
        SocketConsole(str(existing))
    assert existing.read_text() == "keep me"


def test_socket_left_at_close_is_only_removed_when_it_is_still_ours(socket_path):
    console = SocketConsole(socket_path)
    os.unlink(socket_path)
    with open(socket_path, "w") as other:               # someone else's file now
        other.write("theirs")
    console.close()
    with open(socket_path) as other:
        assert other.read() == "theirs"


def test_socket_output_written_as_a_client_leaves_goes_to_the_next_client(socket_path):
    console = SocketConsole(socket_path)
    console.start_input(Feed())
    try:
        first = connect(socket_path)
        wait_attached(console)
        first.close()
        console.write(b"z" * 100)        # at once: the write fails (EPIPE) or finds no client
        console.flush()
        second = connect(socket_path)
        wait_attached(console)
        flush_until_empty(console)
        assert read_until(second, b"z" * 100) == b"z" * 100
        second.close()
    finally:
        console.close()
    assert console.dropped == 0
