"""`pyvmm run --serial ...` end to end: input comes from stdin whatever the
output is (null, file:), and the pty and socket back-ends carry the
console both ways, as a user attaches to them."""

import os
import select
import socket
import subprocess
import sys
import time

import pytest


def pyvmm(*args, stdin=b""):
    return subprocess.run([sys.executable, "-m", "pyvmm", *args], input=stdin,
                          capture_output=True, timeout=60)


def start(*args):
    """pyvmm in the background, with input waiting on its stdin that must not reach the guest."""
    process = subprocess.Popen([sys.executable, "-m", "pyvmm", *args], stdin=subprocess.PIPE,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    process.stdin.write(b"stdin is not the console\x04")
    process.stdin.close()
    process.stdin = None            # communicate() has nothing more to send
    return process


def console_location(process):
    line = process.stderr.readline().decode()
    prefix = "pyvmm: serial console on "
    assert line.startswith(prefix), line
    return line[len(prefix):].rstrip("\n")


def read_until(source, expected, timeout=30):
    received = b""
    deadline = time.monotonic() + timeout
    while not received.endswith(expected) and time.monotonic() < deadline:
        if select.select([source], [], [], 0.1)[0]:
            try:
                chunk = (source.recv(4096) if isinstance(source, socket.socket)
                         else os.read(source, 4096))
            except OSError:         # the pty closed with the run
                break
            if not chunk:
                break
            received += chunk
    return received


@pytest.mark.parametrize("serial", ["null", "file:LOG"])
def test_input_comes_from_stdin_whatever_the_output_is(serial, tmp_path):
    serial = serial.replace("LOG", str(tmp_path / "console.log"))
    result = pyvmm("run", "--guest", "status", "--serial", serial, "--timeout", "20", stdin=b"42\n")
    assert (result.returncode, result.stderr) == ((42 << 1) | 1, b"")


def test_echo_to_a_file_takes_typed_input_from_stdin(tmp_path):
    log = tmp_path / "console.log"
    result = pyvmm("run", "--guest", "echo", "--serial", f"file:{log}", "--timeout", "20",
                   stdin=b"hi\x04")
    assert (result.returncode, result.stdout, log.read_bytes()) == (0, b"", b"hi\nbye\n")


def test_pty_carries_the_console_both_ways():
    process = start("run", "--guest", "echo", "--serial", "pty", "--timeout", "60")
    try:
        path = console_location(process)
        assert path.startswith("/dev/pts/")
        terminal = os.open(path, os.O_RDWR | os.O_NOCTTY)
        try:
            os.write(terminal, b"ab\x04")
            assert read_until(terminal, b"bye\n") == b"ab\nbye\n"
        finally:
            os.close(terminal)
        stdout, stderr = process.communicate(timeout=60)
        assert (process.returncode, stdout, stderr) == (0, b"", b"")
    finally:
        process.kill()
        process.wait()


def test_socket_carries_the_console_and_a_client_may_leave_and_another_come(tmp_path):
    path = tmp_path / "serial.sock"
    process = start("run", "--guest", "echo", "--serial", f"socket={path}", "--timeout", "60")
    try:
        assert console_location(process) == str(path)
        first = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        first.connect(str(path))
        first.sendall(b"a")
        assert read_until(first, b"a") == b"a"
        first.close()                                        # the client leaves; the guest runs on
        second = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        second.connect(str(path))
        second.sendall(b"b\x04")
        assert read_until(second, b"bye\n") == b"b\nbye\n"
        assert second.recv(10) == b""                        # closed at the end of the run
        second.close()
        stdout, stderr = process.communicate(timeout=60)
        assert (process.returncode, stdout, stderr) == (0, b"", b"")
        assert not path.exists()
    finally:
        process.kill()
        process.wait()


def test_socket_with_no_client_runs_the_guest_and_says_output_was_dropped(tmp_path):
    path = tmp_path / "serial.sock"
    result = pyvmm("run", "--serial", f"socket={path}", "--timeout", "20")
    assert result.returncode == 0
    assert result.stderr.decode().splitlines() == [
        f"pyvmm: serial console on {path}",
        "pyvmm: warning: 26 bytes of console output were dropped: no client was attached "
        "to the serial socket"]
    assert not path.exists()


def test_socket_over_an_existing_file_is_a_usage_error_and_the_file_stays(tmp_path):
    path = tmp_path / "notes"
    path.write_text("keep")
    result = pyvmm("run", "--serial", f"socket={path}")
    assert result.returncode == 2
    assert result.stderr.decode() == \
        f"pyvmm: error: cannot listen on serial socket {path}: Address already in use\n"
    assert path.read_text() == "keep"
