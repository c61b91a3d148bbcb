"""The API server (pyvmm/api) against a running VM: every answer follows the
OpenAPI document; wrong-state requests get 409 with the reason; malformed,
oversized or slow requests get a 4xx or are dropped, and neither stop the
VM nor hold up other clients; a thousand clients in turn leak nothing; the
socket is private and only replaces a stale one; `pyvmm remote` drives a
`pyvmm run --api-socket` from snapshot to a restored, resumed VM."""

import json
import os
import socket
import stat
import struct
import subprocess
import sys
import threading
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pyvmm import guests
from pyvmm.api import ApiServer, ApiSocketError, document
from pyvmm.api.client import call
from pyvmm.api.http import parse_response
from pyvmm.api.server import LINGER, REQUEST_DEADLINE
from pyvmm.config import VmConfig
from pyvmm.machine import Machine


def flood_image(count):
    with open(guests.path("serial_flood.bin"), "rb") as f:
        image = bytearray(f.read())
    struct.pack_into("<I", image, 0x24, count)
    return bytes(image)


class Running:
    """A machine running on a thread of its own, with its API server."""

    def __init__(self, path, image=None, kernel=None, paused=False):
        config = VmConfig(kernel=kernel, serial="buffer", raw_mode=None if kernel else "protected", timeout=120)
        self.machine = Machine(config, image, None) if image else Machine(config)
        self.server = ApiServer(path).start(self.machine)
        self.path = self.server.path
        self.outcome = {}
        self.thread = threading.Thread(target=lambda: self.outcome.update(result=self.machine.run(paused=paused)))
        self.thread.start()

    def call(self, command, body=None):
        return call(self.path, document().by_command[command], body, timeout=30)

    def progress(self):
        return self.machine.serial.bytes_transmitted

    def close(self):
        if self.machine.state != "shutdown":
            self.machine.shutdown()
        self.thread.join(60)
        self.server.close()
        self.machine.close()


@pytest.fixture
def flooding(tmp_path):
    running = Running(str(tmp_path / "api.sock"), flood_image(50_000_000))
    deadline = time.monotonic() + 10
    while running.progress() < 100:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    yield running
    running.close()


def raw(path, data, timeout=10, finish=True):
    """Sends `data` on a new connection (then says it is done, unless not
    `finish`); the answer's bytes (b"" when dropped)."""
    client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    client.settimeout(timeout)
    try:
        client.connect(path)
        try:
            client.sendall(data)
            if finish:
                client.shutdown(socket.SHUT_WR)
        except (ConnectionResetError, BrokenPipeError):
            pass                                          # answered (or dropped) before the end
        answer = b""
        while True:
            chunk = client.recv(65536)
            if not chunk:
                return answer
            answer += chunk
    except (ConnectionResetError, BrokenPipeError):
        return answer
    finally:
        client.close()


def test_every_answer_follows_the_document(flooding, tmp_path):
    # call() checks each status and body against the document: a mismatch raises
    assert flooding.call("ping")[1]["pid"] == os.getpid()
    status, info = flooding.call("info")
    assert status == 200 and info["state"] == "running" and info["memory_actual_size"] == 128 << 20
    assert {"name": "serial (COM1)", "bus": "port", "base": 0x3F8, "length": 8} in info["devices"]
    status, counters = flooding.call("counters")
    assert status == 200 and counters["exits"] + counters["coalesced"] > 0
    assert flooding.call("resume") == (409, {"error": "cannot resume: the VM is running, not paused"})
    status, answer = flooding.call("snapshot", {"destination_url": f"file://{tmp_path}/running"})
    assert status == 409 and "pause it" in answer["error"]
    assert flooding.call("pause") == (204, None)
    assert flooding.call("pause")[0] == 409
    sent = flooding.progress()
    time.sleep(0.2)
    assert flooding.progress() == sent                       # paused means paused
    status, info = flooding.call("info")
    assert info["state"] == "paused" and all(vcpu["parked"] for vcpu in info["vcpus"])
    assert flooding.call("power-button")[0] == 409
    assert flooding.call("snapshot", {"destination_url": f"file://{tmp_path}/vm"}) == (204, None)
    assert sorted(os.listdir(tmp_path / "vm")) == ["config.json", "memory", "state.json"]
    status, answer = flooding.call("snapshot", {"destination_url": f"file://{tmp_path}/vm"})
    assert status == 400 and "already holds a snapshot" in answer["error"]
    status, answer = flooding.call("snapshot", {"destination_url": "file://elsewhere/x"})
    assert status == 400
    assert flooding.call("resume") == (204, None)
    deadline = time.monotonic() + 10
    while flooding.progress() == sent:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    assert flooding.call("power-button") == (204, None)
    assert flooding.call("shutdown") == (204, None)
    flooding.thread.join(30)
    assert flooding.outcome["result"].reason == "shutdown"


def test_the_power_button_powers_off_an_acpi_guest(tmp_path):
    running = Running(str(tmp_path / "api.sock"), kernel=guests.path("powerbutton.bin"))
    try:
        deadline = time.monotonic() + 20
        while b"waiting" not in running.machine.serial_output:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        assert running.call("power-button") == (204, None)
        running.thread.join(30)
        result = running.outcome["result"]
        assert (result.status, result.reason) == (0, "poweroff")
        assert running.machine.serial_output.endswith(b"power button\n")
    finally:
        running.close()


requests = st.one_of(
    st.binary(max_size=600),
    st.builds(lambda method, target, version, extra: f"{method} {target} {version}\r\n{extra}\r\n\r\n".encode(),
              st.sampled_from(["GET", "PUT", "POST", "G\x00T", ""]),
              st.sampled_from(["/api/v1/vm.info", "/api/v1/vm.snapshot", "/api/v1/nope", "/", "*", "/api/v1/"]),
              st.sampled_from(["HTTP/1.1", "HTTP/1.0", "HTTP/9.9", "http/1.1", ""]),
              st.text(max_size=80)),
    st.builds(lambda body: b"PUT /api/v1/vm.snapshot HTTP/1.1\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body),
              st.one_of(st.binary(max_size=200), st.just(b'{"destination_url": 5}'),
                        st.just(b'[' * 5000 + b']' * 5000), st.just(b'{"destination_url": "file:///proc/x"}'))),
)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=requests)
def test_malformed_requests_get_4xx_or_are_dropped_and_the_vm_runs_on(flooding, data):
    answer = raw(flooding.path, data, timeout=REQUEST_DEADLINE + 5)
    if answer:
        status = parse_response(answer).status
        assert 400 <= status < 500 or status == 501 or status == 505 or status == 200, answer[:200]
    assert flooding.machine.state == "running"
    before = flooding.progress()
    deadline = time.monotonic() + 5
    while flooding.progress() == before:
        assert time.monotonic() < deadline, "the VM stopped"
        time.sleep(0.002)


def test_slow_and_oversized_clients_hold_up_nobody(flooding):
    slow = []
    for _ in range(8):                                   # trickle a few bytes, never finish
        client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        client.connect(flooding.path)
        client.sendall(b"GET /api/v1/vm.info HTTP/1.1\r\nHost: x\r\n")
        slow.append(client)
    started = time.monotonic()
    assert flooding.call("ping")[0] == 200
    assert time.monotonic() - started < REQUEST_DEADLINE / 2
    huge = b"PUT /api/v1/vm.snapshot HTTP/1.1\r\nContent-Length: 1000000\r\n\r\n" + b"x" * 100
    assert parse_response(raw(flooding.path, huge)).status == 413
    endless = b"GET /api/v1/vm.info HTTP/1.1\r\n" + b"X-Pad: " + b"a" * 20000
    assert parse_response(raw(flooding.path, endless)).status == 431
    for client in slow:                                  # dropped after the deadline, answered nothing
        client.settimeout(REQUEST_DEADLINE + 5)
        assert client.recv(100) == b""
        client.close()
    before = flooding.progress()
    time.sleep(0.1)
    assert flooding.progress() > before


def open_fds():
    return len(os.listdir("/proc/self/fd"))


def test_a_thousand_clients_in_turn_leak_nothing(flooding):
    flooding.call("ping")
    time.sleep(LINGER + 0.3)                 # the server's end of that connection is closed by now
    fds, threads = open_fds(), threading.active_count()
    for number in range(1000):
        command = ("ping", "info", "counters")[number % 3]
        assert flooding.call(command)[0] == 200
    assert raw(flooding.path, b"junk\r\n\r\n")
    time.sleep(LINGER + 0.3)
    assert open_fds() == fds and threading.active_count() == threads
    assert flooding.server.requests >= 1001


def test_the_socket_is_private_and_replaces_only_a_stale_one(tmp_path):
    path = str(tmp_path / "api.sock")
    with ApiServer(path) as server:
        info = os.lstat(path)
        assert stat.S_ISSOCK(info.st_mode) and info.st_mode & 0o777 == 0o600
        with pytest.raises(ApiSocketError, match="another process listens on it"):
            ApiServer(path)
        assert os.lstat(path).st_ino == info.st_ino
    assert not os.path.exists(path)                       # removed with the server
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(path)
    stale.close()                                         # nobody listens: stale
    with ApiServer(path):
        assert os.lstat(path).st_mode & 0o777 == 0o600
    with open(path, "w") as f:
        f.write("precious")
    with pytest.raises(ApiSocketError, match="exists and is not a socket"):
        ApiServer(path)
    assert open(path).read() == "precious"
    assert [name for name in os.listdir(tmp_path) if name.startswith(".pyvmm-api")] == []


def pyvmm(*args, **kwargs):
    return subprocess.run([sys.executable, "-m", "pyvmm", *args], capture_output=True, timeout=120,
                          check=False, **kwargs)


def test_remote_snapshots_and_a_restored_vm_resumes(tmp_path):
    """pyvmm run --api-socket; pyvmm remote pause, snapshot, shutdown; pyvmm run
    --restore --paused --api-socket; pyvmm remote resume: the output goes on."""
    image = tmp_path / "flood.bin"
    image.write_bytes(flood_image(30_000))
    first_socket, second_socket = str(tmp_path / "one.sock"), str(tmp_path / "two.sock")
    first = subprocess.Popen([sys.executable, "-m", "pyvmm", "run", str(image), "--raw-mode", "protected",
                              "--api-socket", first_socket, "--timeout", "120"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 20
        while not os.path.exists(first_socket):
            assert time.monotonic() < deadline and first.poll() is None
            time.sleep(0.02)
        assert pyvmm("remote", "--api-socket", first_socket, "pause").returncode == 0
        snapshot = pyvmm("remote", "--api-socket", first_socket, "snapshot", str(tmp_path / "vm"))
        assert snapshot.returncode == 0 and snapshot.stdout == b"", snapshot.stderr
        refused = pyvmm("remote", "--api-socket", first_socket, "resume", "extra")
        assert refused.returncode == 2
        again = pyvmm("remote", "--api-socket", first_socket, "snapshot", str(tmp_path / "vm"))
        assert again.returncode == 1 and again.stderr.decode().startswith("pyvmm: error: ")
        assert pyvmm("remote", "--api-socket", first_socket, "shutdown").returncode == 0
        before, errors = first.communicate(timeout=60)
        assert first.returncode == 0, errors
    finally:
        first.kill()
        first.wait()
    assert not os.path.exists(first_socket)
    second = subprocess.Popen([sys.executable, "-m", "pyvmm", "run", "--restore", str(tmp_path / "vm"),
                               "--paused", "--api-socket", second_socket],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 20
        while not os.path.exists(second_socket):
            assert time.monotonic() < deadline and second.poll() is None
            time.sleep(0.02)
        info = json.loads(pyvmm("remote", "--api-socket", second_socket, "info").stdout)
        assert info["state"] == "paused"
        assert pyvmm("remote", "--api-socket", second_socket, "resume").returncode == 0
        after, errors = second.communicate(timeout=60)
        assert second.returncode == 1, errors               # serial_flood ends with debug-exit 0
    finally:
        second.kill()
        second.wait()
    line = b"0123456789abcdef" * 3 + b"0123456789abcde\n"
    assert before + after == (line * (30_000 // 64 + 1))[:30_000]


def test_remote_without_a_server_is_one_error_line(tmp_path):
    finished = pyvmm("remote", "--api-socket", str(tmp_path / "none.sock"), "ping")
    assert finished.returncode == 1
    assert finished.stderr.decode() == f"pyvmm: error: no API socket at {tmp_path / 'none.sock'}\n"
