"""The network device on a real TAP inside a network namespace each test
makes (traffic stays in it): the tiny guest stack (guests/virtio/net.c)
answers ping and UDP echo from the host, shows the configured MAC and link,
and the device's counters match what the TAP saw."""

import json
import subprocess
import sys

import pytest

from pyvmm import guests
from pyvmm.testing.netns import GUEST_ADDRESS, HOST_ADDRESS, MAC, NetNamespace, exchange

pytestmark = pytest.mark.tap

PAYLOADS = [b"ping", bytes(range(256)) * 4]
ECHOES = [b"hello", b"x" * 1400, bytes(range(256)) * 16]           # 4 KiB: merged receive buffers


@pytest.fixture
def ns():
    with NetNamespace() as namespace:
        namespace.add_tap("tap0", f"{HOST_ADDRESS}/24", mtu=9000)
        yield namespace


def pyvmm_command(*options, cmdline=None):
    command = [sys.executable, "-m", "pyvmm", "run", guests.path("virtio-net.bin"), "--timeout", "60",
               *options]
    if cmdline is not None:
        command += ["--cmdline", cmdline]
    return command


def lines(output):
    return [line for line in output.decode(errors="replace").splitlines() if not line.startswith("~ ")]


@pytest.mark.parametrize("cmdline", [None, "mrg=0 bufsize=9100", "csum=1"])
def test_ping_and_udp_echo_through_the_tap_with_matching_counters(ns, cmdline):
    before = ns.link_stats("tap0")
    def neighbours():
        return ns.run(["ip", "neigh", "show", GUEST_ADDRESS, "dev", "tap0"]).stdout
    result = exchange(ns, pyvmm_command("--net", f"tap=tap0,mac={MAC}", "--stats", "json", cmdline=cmdline),
                      PAYLOADS, ECHOES, before_quit=neighbours)
    assert result.ready and result.status == 1, result
    assert result.pings == PAYLOADS, result
    assert result.echoes == ECHOES, result
    assert result.bye == b"bye"
    output = lines(result.output)
    assert f"mac {MAC}" in output and "link up (status 0x1)" in output
    assert "icmp echo replies 2, udp echoes 3" in output
    if cmdline is None:
        assert "udp echo from port 40000, 4096 bytes in 3 buffers: replied" in output
    counters = json.loads(result.errors.decode().strip().splitlines()[-1])["devices"]["net0"]
    after = ns.link_stats("tap0")
    # What the host put into the TAP is what the device took, and the other way round.
    assert counters["rx_packets"] == after["tx_packets"] - before["tx_packets"]
    assert counters["tx_packets"] == after["rx_packets"] - before["rx_packets"]
    assert counters["rx_dropped"] == counters["tx_dropped"] == 0
    assert counters["rx_packets"] >= 1 + 2 + 3 + 1          # ARP, pings, echoes, quit
    assert counters["rx_bytes"] > sum(map(len, PAYLOADS + ECHOES))
    assert MAC in result.observed                          # the ARP reply carried the configured MAC


def test_a_tap_made_for_the_run_is_gone_when_it_ends(ns):
    guest = ns.run(["true"])       # the namespace exists
    assert guest.returncode == 0
    command = ns.exec_command(pyvmm_command("--net", "mac=52:54:00:aa:bb:cc", "--timeout", "3"))
    run = subprocess.run(command, capture_output=True, timeout=60)
    message = [line for line in run.stderr.decode().splitlines() if "made for this run" in line]
    assert len(message) == 1, run.stderr
    name = message[0].split("TAP device ")[1].split(",")[0]
    assert name.startswith("pyvmmtap")
    assert b"mac 52:54:00:aa:bb:cc" in run.stdout
    links = ns.run(["ip", "-o", "link"]).stdout
    assert name not in links and "tap0" in links


def test_making_a_tap_without_cap_net_admin_is_one_error_line(ns):
    command = ["setpriv", "--bounding-set=-all", "--inh-caps=-all", *pyvmm_command("--net", f"mac={MAC}")]
    run = subprocess.run(ns.exec_command(command), capture_output=True, timeout=60)
    assert run.returncode == 2, run
    errors = run.stderr.decode().splitlines()
    assert len(errors) == 1 and errors[0].startswith("pyvmm: error: --net:") and "CAP_NET_ADMIN" in errors[0]
    assert run.stdout == b""


def test_a_tap_that_does_not_exist_is_one_error_line(ns):
    run = subprocess.run(ns.exec_command(pyvmm_command("--net", "tap=nosuchtap")), capture_output=True,
                         timeout=60)
    assert run.returncode == 2
    errors = run.stderr.decode().splitlines()
    assert len(errors) == 1 and "no network interface nosuchtap" in errors[0], errors


def test_frames_arriving_while_the_guest_resets_the_device_again_and_again(ns):
    """The guest resets and sets the device up eight times (every other
    time without merged buffers) while the host keeps sending it frames of
    up to 8000 bytes; then, frames still arriving, it answers as usual."""
    import threading
    from pyvmm.testing.netns import UdpClient
    stop = threading.Event()
    flood = UdpClient(ns)
    flood.sock.setblocking(False)

    def send():
        sizes = [60, 1000, 3000, 8000]
        count = 0
        while not stop.is_set():
            try:
                flood.sock.sendto(bytes(sizes[count % 4]), (GUEST_ADDRESS, 5000 + count % 3))
            except (BlockingIOError, OSError):
                pass
            count += 1
            stop.wait(0.005)          # 200 frames a second: fewer than the guest can take
    ns.neighbour("tap0", GUEST_ADDRESS, MAC)          # no ARP: frames flow from the start
    sender = threading.Thread(target=send)
    sender.start()
    try:
        result = exchange(ns, pyvmm_command("--net", f"tap=tap0,mac={MAC}", "--stats", "json",
                                            cmdline="resets=8 resetms=40 quiet=1"), PAYLOADS, ECHOES)
    finally:
        stop.set()
        sender.join()
        flood.close()
    assert result.ready and result.status == 1, result
    assert result.pings == PAYLOADS and result.echoes == ECHOES and result.bye == b"bye", result
    assert b"8 resets done" in result.output
    counters = json.loads(result.errors.decode().strip().splitlines()[-1])["devices"]["net0"]
    assert counters["rx_packets"] > 20
