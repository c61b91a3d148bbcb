"""Snapshot-fuzzing targets for long campaigns (`pyvmm fuzz` runs every test
in this directory under HypoFuzz; pytest runs them as ordinary hypothesis
tests): the bundled fuzz target's answers against a model of its parser.

No pytest fixtures (HypoFuzz fuzzes only tests without them): the fuzzer is
made once per process, on first use.
"""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fuzz_target_model import model, records

from pyvmm.testing import fuzz_settings

pytestmark = pytest.mark.kvm
_fuzzer = None


def teardown_module():
    global _fuzzer
    if _fuzzer is not None:
        _fuzzer.close()
        _fuzzer = None


def fuzzer():
    global _fuzzer
    if _fuzzer is None:
        from pyvmm import guests
        from pyvmm.config import VmConfig
        from pyvmm.testing import SnapshotFuzzer
        _fuzzer = SnapshotFuzzer(VmConfig(kernel=guests.path("fuzz_target.elf")))
    return _fuzzer


@fuzz_settings(max_examples=200)
@given(data=st.one_of(records, st.binary(max_size=96)))
def test_fuzz_target_answers_as_its_model_or_crashes_where_it_should(data):
    outcome = fuzzer().run(data)
    expected = model(data)
    if expected is None:
        assert outcome.crashed, outcome
    else:
        assert outcome.parked and outcome.value == expected, outcome
