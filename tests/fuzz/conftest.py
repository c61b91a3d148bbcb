"""The fuzz suites: hypothesis profile and replay instructions for failures.

Every suite here uses `pyvmm.testing.fuzz_settings`, whose profile keeps
hypothesis's example database in .hypothesis/examples of the directory the
tests run from (the repository's, ignored by git): a failing example is
stored there and replayed first by the next run of the same test.  Failures of a test in this directory get
a "replay" section with the command that reruns just that test, and
hypothesis prints `@reproduce_failure(...)` (print_blob) for pinning the
example in the source.  PYVMM_FUZZ_SCALE=N multiplies every example count.
"""

import shlex

import pytest

from pyvmm.testing import example_database_path, settings_profile

settings_profile()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.when == "call" and report.failed:
        command = f"python -m pytest {shlex.quote(item.nodeid)} -p no:randomly"
        report.sections.append((
            "replay",
            f"replay: {command}\n"
            f"(the failing example is stored in {example_database_path()} and runs first; "
            f"or paste the @reproduce_failure decorator printed above onto the test)"))
