"""`pyvmm fuzz`: without the optional HypoFuzz, one error line saying how to
get it; with it (CI runs this file in a virtual environment with pyvmm[fuzz]),
a bounded campaign over the project's targets passes, and one over a target
with a bug fails, prints the shrunk example, and leaves it in the shared
database for every later run to replay."""

import importlib.util
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
HAVE_HYPOFUZZ = importlib.util.find_spec("hypofuzz") is not None
needs_hypofuzz = pytest.mark.skipif(not HAVE_HYPOFUZZ, reason="HypoFuzz is not installed (pip install "
                                    "'pyvmm[fuzz]'); CI runs these in a virtual environment with it")

BUGGY_TARGET = '''
from hypothesis import given, strategies as st
from pyvmm.testing import fuzz_settings

@fuzz_settings(max_examples=20)
@given(st.binary(max_size=64))
def test_no_marker(data):
    assert b"\\x10" not in data
'''


def pyvmm(*args, env=None, timeout=300):
    return subprocess.run([sys.executable, "-m", "pyvmm", *args], capture_output=True, timeout=timeout,
                          check=False, cwd=ROOT, env=env)


@pytest.mark.skipif(HAVE_HYPOFUZZ, reason="HypoFuzz is installed here")
def test_without_hypofuzz_it_is_one_error_line():
    finished = pyvmm("fuzz", "--seconds", "1")
    assert finished.returncode == 2
    assert finished.stderr.decode() == ("pyvmm: error: pyvmm fuzz needs HypoFuzz: pip install 'pyvmm[fuzz]' "
                                        "(HypoFuzz is AGPL-3.0, an optional extra)\n")


@needs_hypofuzz
@pytest.mark.kvm
def test_a_bounded_campaign_over_the_projects_targets_passes(tmp_path):
    database = tmp_path / "examples"
    finished = pyvmm("fuzz", "--seconds", "20", "--database", str(database),
                     "tests/fuzz/test_snapshot_targets.py", "tests/fuzz/test_device_invariants.py")
    assert finished.returncode == 0, finished.stdout.decode()[-3000:] + finished.stderr.decode()[-3000:]
    assert b"test_fuzz_target_answers_as_its_model" in finished.stdout
    assert any(database.rglob("*")), "the campaign stored nothing"


@needs_hypofuzz
def test_a_campaign_that_finds_a_bug_fails_and_keeps_it_for_every_run(tmp_path):
    target = tmp_path / "test_buggy_target.py"
    target.write_text(BUGGY_TARGET)
    database = tmp_path / "shared-examples"
    # CI=true: hypothesis then loads its "ci" profile, which has no database;
    # the campaign keeps using the fuzz profile's (HypoFuzz's own writes too).
    # The campaign ends as soon as every test has failed (about 5 s here).
    finished = pyvmm("fuzz", "--seconds", "120", "--database", str(database), str(target), timeout=300,
                     env=dict(os.environ, CI="true"))
    assert finished.returncode == 1, finished.stdout.decode()[-3000:] + finished.stderr.decode()[-3000:]
    assert b"data=b'\\x10'" in finished.stdout              # found, shrunk, shown
    replay = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(target)],
                            capture_output=True, timeout=120, check=False, cwd=tmp_path,
                            env=dict(os.environ, PYVMM_FUZZ_DATABASE=str(database)))
    assert replay.returncode == 1 and b"data=b'\\x10'" in replay.stdout


def test_bad_options_are_one_error_line():
    finished = pyvmm("fuzz", "--processes", "0")
    assert finished.returncode == 2 and finished.stderr.startswith(b"pyvmm: error: ")
