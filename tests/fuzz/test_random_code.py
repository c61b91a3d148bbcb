"""Random code guests end in a documented way, in time, in every entry mode.

Random bytes (mixed with fragments of port I/O, MMIO and control
instructions, so the platform devices get poked) are loaded as a raw
image in real, protected and long mode and run with a 2 s timeout.  Each
run must end with a documented status and reason (README, "Exit status"):
0 (halt, reset, power-off, S3 with no wake source), 124 (timeout), 125 (a guest crash:
triple fault, KVM internal or entry error, ...) or a debug-exit status
(v << 1) | 1, within the timeout plus a margin, never with an exception,
a hang or a pyvmm internal error (an exception out of a device or the run
loop, which the vCPU thread turns into status 125 with "pyvmm internal
error" in the message).  Each example costs up to the timeout: few of them.
"""

import threading
import time

import pytest
from hypothesis import event, given, strategies as st

from pyvmm.config import VmConfig
from pyvmm.loader import LoadOptions
from pyvmm.run.stop import STATUS_CRASH, STATUS_OK, STATUS_TIMEOUT
from pyvmm.testing import fuzz_settings
from pyvmm.machine import Machine

pytestmark = pytest.mark.kvm

TIMEOUT = 2.0
MARGIN = 3.0          # stopping the vCPUs and joining their threads
HANG_LIMIT = 30.0     # beyond this the run is declared hung
OK_REASONS = {"halt", "reset", "poweroff", "sleep-s3"}
CRASH_REASONS = {"triple-fault", "fail-entry", "internal-error", "guest-crash", "bad-io",
                 "bad-mmio", "unhandled-exit"}

# Byte fragments that decode to I/O and control instructions in most modes.
FRAGMENTS = [
    b"\xe6\xf4", b"\xe6\x80", b"\xe6\x70", b"\xe4\x71", b"\xe6\xe9", b"\xe4\x60", b"\xe6\x64",
    b"\xb0\xfe\xe6\x64",                   # mov al, 0xfe; out 0x64, al (i8042 reset)
    b"\xb0\x2a\xe6\xf4",                   # mov al, 0x2a; out 0xf4, al (debug-exit)
    b"\x66\xba\xf8\x03", b"\xba\xf8\x03\x00\x00", b"\xee", b"\xec", b"\xef", b"\xed",
    b"\xf3\x6e", b"\xf3\x6c", b"\x6f", b"\x6d",  # rep outsb / insb, outsd, insd
    b"\xba\x04\x06\x00\x00\xb8\x00\x20\x00\x00\x66\xef",  # PM1_CNT SLP_EN (S5)
    b"\xba\xf9\x0c\x00\x00\xb0\x06\xee",   # reset control 0xcf9
    b"\xba\x10\x05\x00\x00\x66\xef\x42\xec",  # fw_cfg select, read
    b"\xa1\x00\x00\x00\xff", b"\xa3\x00\x00\x00\xff",  # mov eax <-> [0xff000000] (iomem)
    b"\xa1\x00\x00\xc0\xfe", b"\xa3\x00\x00\xe0\xfe",  # IOAPIC / LAPIC
    b"\xfa\xf4", b"\xfb\xf4", b"\xf4", b"\xcc", b"\x0f\x0b", b"\xcd\x80", b"\x0f\x01\xd9",
    b"\x0f\x30", b"\x0f\x32", b"\x0f\xa2", b"\x0f\x05", b"\xeb\xfe", b"\x90",
]

code = st.lists(st.one_of(st.binary(min_size=1, max_size=16), st.sampled_from(FRAGMENTS)),
                min_size=1, max_size=24).map(b"".join)


def run_guest(image, mode):
    """(RunResult, run seconds, serial output) of `image` run as a raw binary;
    the run happens in a thread so a hang is reported rather than waited out."""
    outcome = {}

    def target():
        try:
            config = VmConfig(kernel="random", raw_mode=mode, serial="buffer", timeout=TIMEOUT,
                              memory=32 << 20)
            with Machine(config, image, LoadOptions(raw_mode=mode)) as machine:
                start = time.monotonic()
                result = machine.run()
                outcome["result"] = (result, time.monotonic() - start, machine.serial_output)
        except BaseException as error:  # reported in the test's thread
            outcome["error"] = error

    thread = threading.Thread(target=target, name=f"random-code-{mode}", daemon=True)
    thread.start()
    thread.join(HANG_LIMIT)
    assert not thread.is_alive(), f"the run did not end within {HANG_LIMIT} s"
    if "error" in outcome:
        raise outcome["error"]
    return outcome["result"]


def check_documented_ending(result, seconds):
    assert seconds <= TIMEOUT + MARGIN, f"{result!r} after {seconds:.2f} s"
    assert "pyvmm internal error" not in result.message, result.message
    status, reason = result.status, result.reason
    if status == STATUS_OK:
        assert reason in OK_REASONS, result
    elif status == STATUS_TIMEOUT:
        assert reason == "timeout", result
    elif status == STATUS_CRASH:
        assert reason in CRASH_REASONS or reason.startswith("system-event-"), result
        assert result.message, result
    else:
        assert status & 1 and reason == "debug-exit", result


@pytest.mark.parametrize("mode", ["real", "protected", "long"])
@fuzz_settings(max_examples=8)
@given(image=code)
def test_random_code_ends_in_a_documented_way(mode, image):
    result, seconds, _output = run_guest(image, mode)
    event(f"{result.status} {result.reason}")
    check_documented_ending(result, seconds)


@pytest.mark.parametrize("mode", ["real", "protected", "long"])
def test_known_endings(mode):
    """The fragments' intended endings, one run each, as a sanity check."""
    result, seconds, _ = run_guest(b"\xb0\x2a\xe6\xf4\xfa\xf4", mode)   # debug-exit 0x2a
    assert (result.status, result.reason) == ((0x2A << 1) | 1, "debug-exit")
    result, seconds, _ = run_guest(b"\xfa\xf4", mode)                   # cli; hlt
    assert (result.status, result.reason) == (STATUS_OK, "halt")
    check_documented_ending(result, seconds)
