"""The network guest under QEMU's microvm (virtio-net-device on a TAP) and
under pyvmm, each in its own network namespace: the same answers to the
same ping and UDP traffic, and the same lines printed (the `~` lines apart:
QEMU offers more features)."""

import sys

import pytest

from pyvmm import guests
from pyvmm.testing.netns import HOST_ADDRESS, MAC, NetNamespace, exchange, microvm_net_command

pytestmark = [pytest.mark.qemu, pytest.mark.kvm, pytest.mark.tap]

PAYLOADS = [b"a", bytes(range(256)) * 5]
ECHOES = [b"hello", b"y" * 1472, bytes(range(256)) * 12]


def run_in_namespace(command_for):
    with NetNamespace() as ns:
        ns.add_tap("tap0", f"{HOST_ADDRESS}/24", mtu=9000)
        return exchange(ns, command_for("tap0"), PAYLOADS, ECHOES)


def guest_lines(output):
    lines = output.decode(errors="replace").splitlines()
    return [line for line in lines if not line.startswith("~ ")]


@pytest.mark.parametrize("cmdline", ["mrg=1", "mrg=0 bufsize=9100", "csum=1"])
def test_the_network_guest_answers_the_same_under_qemu_and_pyvmm(cmdline):
    kernel = guests.path("virtio-net.bin")
    qemu = run_in_namespace(lambda tap: microvm_net_command(kernel, tap, MAC, cmdline))
    pyvmm = run_in_namespace(lambda tap: [sys.executable, "-m", "pyvmm", "run", kernel, "--timeout", "60",
                                          "--net", f"tap={tap},mac={MAC}", "--cmdline", cmdline])
    for result in (qemu, pyvmm):
        assert result.ready and result.status == 1, result
        assert result.pings == PAYLOADS and result.echoes == ECHOES and result.bye == b"bye", result
    assert guest_lines(pyvmm.output) == guest_lines(qemu.output), (pyvmm, qemu)
