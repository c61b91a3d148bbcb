"""What this machine's kvm_pvm cannot run, on real (emulated) SVM: 32-bit
paging without PAE, an interrupt handler returning with iret in protected
mode, a triple fault in real mode. Each guest runs under QEMU/TCG on the
machine (the reference) and under pyvmm inside the SVM host, through the
same runner (tests/differential/qemu_runner.py), and the two must agree."""

import json
import os
import sys

import pytest

from pyvmm import guests

REPOSITORY = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(REPOSITORY, "tests", "differential"))
from qemu_runner import QEMU_ARGS, Run, run, run_qemu  # noqa: E402

pytestmark = pytest.mark.qemu

RUN_TIMEOUT = 90            # qemu_runner kills pyvmm (whose own --timeout is 60 s) after this
CRASHED = 125

# Runs one guest under pyvmm inside L1 with qemu_runner and prints the Run as JSON.
IN_L1 = """
import json, sys
sys.path.insert(0, "tests/differential")
from qemu_runner import run_pyvmm
kernel, options = json.loads(sys.argv[1])
options["stdin"] = options["stdin"].encode("latin-1")
if options.get("prompt") is not None:
    options["prompt"] = options["prompt"].encode("latin-1")
result = run_pyvmm(kernel, **options)
print(json.dumps([result.status, result.output.decode("latin-1"), result.stderr.decode("latin-1")]))
"""


def pyvmm_in_svm_host(host, kernel, stdin=b"", prompt=None, **options):
    """qemu_runner.run_pyvmm(kernel, ...) inside L1; returns its Run."""
    arguments = json.dumps([kernel, dict(options, stdin=stdin.decode("latin-1"),
                                         prompt=prompt and prompt.decode("latin-1"),
                                         timeout=RUN_TIMEOUT)])
    result = host.run([sys.executable, "-c", IN_L1, arguments], cwd=REPOSITORY, timeout=RUN_TIMEOUT + 30)
    assert result.status == 0, result
    status, output, stderr = json.loads(result.stdout)
    return Run(status, output.encode("latin-1"), stderr.encode("latin-1"))


PAGING32_OUTPUT = (b"paging32\ncr4.pae 0\nalias read 0x12345678\nalias write 0xcafef00d\n"
                   b"pte 0x00202063\npde 0x00203023\npse read 0x12345678\npse pde 0x000000a3\n"
                   b"page fault cr2 0xdead0000 error 0x00000002\n")


def test_32bit_paging_without_pae_matches_qemu(svm_host):
    kernel = guests.path("paging32.bin")
    qemu = run_qemu(kernel)
    assert (qemu.status, qemu.output) == (0x45, PAGING32_OUTPUT), qemu
    pyvmm = pyvmm_in_svm_host(svm_host, kernel)
    assert (pyvmm.status, pyvmm.output) == (0x45, PAGING32_OUTPUT), pyvmm


@pytest.mark.parametrize("text", [b"iret\n", b"0123456789abcdef" * 4 + b"\n"])
def test_protected_mode_iret_from_the_uart_interrupt_matches_qemu(svm_host, text):
    """irqecho.bin's handler returns with iret after every byte (a 1-byte
    FIFO trigger): the longer line is 65 interrupts and 65 irets."""
    kernel, want = guests.path("irqecho.bin"), b"irqecho ready\n" + text + b"\nbye\n"
    feed = dict(stdin=text + b"\x04", prompt=b"ready\n")
    qemu = run_qemu(kernel, **feed)
    assert (qemu.status, qemu.output) == (1, want), qemu
    pyvmm = pyvmm_in_svm_host(svm_host, kernel, **feed)
    assert (pyvmm.status, pyvmm.output) == (1, want), pyvmm


def test_real_mode_triple_fault_ends_the_run_as_a_crash(svm_host, tmp_path):
    """QEMU (with -no-reboot) stops on the shutdown and logs it; pyvmm ends
    the run with status 125 and says why, once: no second boot."""
    kernel = guests.path("triple_real.bin")
    log = tmp_path / "qemu.log"
    qemu = run([*QEMU_ARGS, "-drive", f"file={kernel},format=raw,if=ide,snapshot=on",
                "-d", "cpu_reset", "-D", str(log)])
    assert (qemu.status, qemu.output) == (0, b"real triple fault\n"), qemu
    assert log.read_text().count("Triple fault") == 1
    pyvmm = pyvmm_in_svm_host(svm_host, kernel, extra=["--raw-mode", "real"])
    assert (pyvmm.status, pyvmm.output) == (CRASHED, b"real triple fault\n"), pyvmm
    assert b"triple fault" in pyvmm.stderr, pyvmm
