"""The same multiboot-compatible guests under QEMU (TCG) and pyvmm: same serial output, same status.

QEMU and pyvmm both load the flat guests through their multiboot header
(a.out kludge).
"""

import os
import sys

import pytest
from hypothesis import given, settings, strategies as st

from pyvmm import guests

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from qemu_runner import run_pyvmm, run_qemu, run_qemu_reference  # noqa: E402

pytestmark = [pytest.mark.qemu, pytest.mark.kvm]


def test_hello_prints_the_same_as_under_qemu():
    pyvmm = run_pyvmm(guests.path("hello.bin"))
    qemu = run_qemu(guests.path("hello.bin"), expect_output=len(pyvmm.output))
    assert qemu.output == pyvmm.output == b"Hello from a pyvmm guest!\n", (pyvmm, qemu)
    assert pyvmm.status == 0 and qemu.status is None, (pyvmm, qemu)   # QEMU idles in hlt; pyvmm ends the run


@settings(max_examples=5, deadline=None)
@given(value=st.integers(0, 2**16))
def test_debug_exit_status_matches_qemu(value):
    stdin = b"%d\n" % value
    pyvmm = run_pyvmm(guests.path("status.bin"), stdin)
    # status.bin exits with (value << 1) | 1 once it has read the whole line.
    qemu = run_qemu_reference(guests.path("status.bin"), stdin,
                              lambda run: run.status == ((value << 1) | 1) & 0xFF)
    assert (pyvmm.status, pyvmm.output) == (qemu.status, qemu.output), (pyvmm, qemu)


@settings(max_examples=5, deadline=None)
@given(text=st.text(alphabet="abcdefghijklmnopqrstuvwxyz 0123456789\n", max_size=12))
def test_echo_matches_qemu(text):
    stdin = text.encode() + b"\x04"
    echoed = text.encode() + b"\nbye\n"
    pyvmm = run_pyvmm(guests.path("echo.bin"), stdin)
    qemu = run_qemu_reference(guests.path("echo.bin"), stdin, lambda run: run.output == echoed,
                              expect_output=len(echoed))
    assert qemu.output == pyvmm.output == echoed, (pyvmm, qemu)
    assert pyvmm.status == 0, (pyvmm, qemu)
