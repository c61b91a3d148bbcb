"""The same multiboot-compatible guests under QEMU (TCG) and pyvmm: same serial output, same status.

QEMU loads the flat guests through their multiboot header (a.out kludge);
pyvmm loads the same bytes as raw 32-bit protected-mode binaries.
"""

import os
import select
import subprocess
import sys
import time

import pytest
from hypothesis import given, settings, strategies as st

from pyvmm import guests

pytestmark = [pytest.mark.qemu, pytest.mark.kvm]

QEMU_ARGS = ["qemu-system-x86_64", "-accel", "tcg", "-display", "none", "-serial", "stdio",
             "-monitor", "none", "-no-reboot", "-m", "128",
             "-device", "isa-debug-exit,iobase=0xf4,iosize=0x04"]


def run_qemu(name, stdin=b"", expect_output=None, timeout=30):
    """(status or None if still running, output). A halted guest never exits
    under QEMU, so for those we stop once `expect_output` bytes arrived."""
    process = subprocess.Popen([*QEMU_ARGS, "-kernel", guests.path(name)], stdin=subprocess.PIPE,
                               stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    process.stdin.write(stdin)
    process.stdin.flush()
    output = b""
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([process.stdout], [], [], 0.1)
            if ready:
                chunk = os.read(process.stdout.fileno(), 4096)
                if not chunk:      # QEMU closed its stdout: it is exiting
                    process.wait(timeout=10)
                    break
                output += chunk
            if expect_output is not None and len(output) >= expect_output:
                break
            if process.poll() is not None and not ready:
                break
        status = process.poll()
    finally:
        if process.poll() is None:
            process.kill()
        process.wait()
    return status, output


def run_pyvmm(name, stdin=b""):
    result = subprocess.run([sys.executable, "-m", "pyvmm", "run", guests.path(name),
                             "--raw-mode", "protected", "--timeout", "30"],
                            input=stdin, capture_output=True, timeout=60)
    return result.returncode, result.stdout


def test_hello_prints_the_same_as_under_qemu():
    status, output = run_pyvmm("hello.bin")
    qemu_status, qemu_output = run_qemu("hello.bin", expect_output=len(output))
    assert qemu_output == output == b"Hello from a pyvmm guest!\n"
    assert status == 0 and qemu_status is None   # QEMU idles in hlt; pyvmm ends the run


@settings(max_examples=5, deadline=None)
@given(value=st.integers(0, 2**16))
def test_debug_exit_status_matches_qemu(value):
    stdin = b"%d\n" % value
    assert run_pyvmm("status.bin", stdin) == run_qemu("status.bin", stdin)


@settings(max_examples=5, deadline=None)
@given(text=st.text(alphabet="abcdefghijklmnopqrstuvwxyz 0123456789\n", max_size=12))
def test_echo_matches_qemu(text):
    stdin = text.encode() + b"\x04"
    status, output = run_pyvmm("echo.bin", stdin)
    _, qemu_output = run_qemu("echo.bin", stdin, expect_output=len(output))
    assert qemu_output == output
    assert status == 0
