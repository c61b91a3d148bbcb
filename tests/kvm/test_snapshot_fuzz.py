"""Snapshot fuzzing (pyvmm.testing.SnapshotFuzzer) with the bundled target,
guests/fuzz/fuzz_target.c: every example runs from the same checkpoint, so
the guest's answers match a Python model of its parser example after
example; its planted bug is found, shrinks to its smallest input and
replays; a guest that breaks the protocol is refused with the reason."""

import pathlib
import struct
import sys

import pytest
from hypothesis import HealthCheck, find, given, settings
from hypothesis import strategies as st

from pyvmm import guests
from pyvmm.config import VmConfig
from pyvmm.testing import SnapshotFuzzer
from pyvmm.testing.snapshot_fuzz import FuzzTargetError

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "fuzz"))
from fuzz_target_model import model, records  # noqa: E402

inputs = st.one_of(records, st.binary(max_size=96))


@pytest.fixture(scope="module")
def fuzzer():
    with SnapshotFuzzer(VmConfig(kernel=guests.path("fuzz_target.elf"))) as fuzzer:
        yield fuzzer


SETTINGS = dict(deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@settings(max_examples=300, **SETTINGS)
@given(data=inputs)
def test_every_example_starts_from_the_checkpoint_and_matches_the_model(fuzzer, data):
    outcome = fuzzer.run(data)
    expected = model(data)
    if expected is None:
        assert outcome.crashed and outcome.result.reason == "triple-fault", outcome
    else:
        assert outcome.parked and outcome.value == expected, (outcome, hex(expected))


def test_the_planted_bug_is_found_and_shrinks_to_its_smallest_input(fuzzer):
    smallest = find(records, lambda data: fuzzer.run(data).crashed,
                    settings=settings(max_examples=500, database=None, **SETTINGS))
    assert smallest == b"\x10\x00"
    for _ in range(3):                                  # and it replays, every time
        assert fuzzer.run(smallest).crashed
    assert fuzzer.run(b"\x01\x03abc").value == model(b"\x01\x03abc")     # and the VM goes on


def test_a_failing_property_reports_the_shrunk_input(fuzzer):
    @settings(max_examples=500, database=None, **SETTINGS)
    @given(data=records)
    def never_crashes(data):
        assert not fuzzer.run(data).crashed

    with pytest.raises(AssertionError) as failure:
        never_crashes()
    assert "data=b'\\x10\\x00'" in "\n".join(getattr(failure.value, "__notes__", [])) + str(failure.value)


def test_outcomes_carry_the_answer_and_the_pages_restored(fuzzer):
    first = fuzzer.run(b"\x02\x04ABCD")
    second = fuzzer.run(b"\x02\x04ABCD")
    assert first.value == second.value == model(b"\x02\x04ABCD")
    assert second.pages_restored >= 1 and first.output == second.output == b""
    with pytest.raises(ValueError, match="holds 512"):
        fuzzer.run(bytes(513))


def test_a_guest_that_never_parks_is_refused_with_the_reason():
    with pytest.raises(FuzzTargetError, match="did not park"):
        SnapshotFuzzer(VmConfig(kernel=guests.path("hello.bin")), boot_timeout=5)


def test_a_descriptor_outside_ram_is_refused(tmp_path):
    # a real-mode guest that parks with the address 0xfffffff0 through port 0x5f0
    code = b"\x66\xb8\xf0\xff\xff\xff" + b"\xba\xf0\x05" + b"\x66\xef" + b"\xf4"
    kernel = tmp_path / "bad.bin"
    kernel.write_bytes(code)
    with pytest.raises(FuzzTargetError, match="outside guest RAM"):
        SnapshotFuzzer(VmConfig(kernel=str(kernel), raw_mode="real"), boot_timeout=5)
    assert struct.calcsize("<QII") == 16
