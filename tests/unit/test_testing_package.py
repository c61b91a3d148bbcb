"""pyvmm.testing as a user's project meets it: without hypothesis it says
what to install; its example database is the user's, not pyvmm's."""

import os
import subprocess
import sys
import textwrap

import pyvmm

PACKAGE_TREE = os.path.dirname(os.path.dirname(os.path.abspath(pyvmm.__file__)))

WITHOUT_HYPOTHESIS = textwrap.dedent("""
    import sys

    class NoHypothesis:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] == "hypothesis":
                raise ModuleNotFoundError(f"No module named {name!r}", name=name)

    sys.meta_path.insert(0, NoHypothesis())
    try:
        import pyvmm.testing
    except ImportError as error:
        print(error)
        sys.exit(3)
""")


def test_without_hypothesis_the_import_names_the_extra_to_install():
    result = subprocess.run([sys.executable, "-c", WITHOUT_HYPOTHESIS], capture_output=True, timeout=60)
    assert result.returncode == 3, result.stderr
    assert result.stdout.decode() == ("pyvmm.testing needs hypothesis, which is not installed: "
                                      "pip install 'pyvmm[test]' (or pip install hypothesis)\n")


USER_TEST = textwrap.dedent("""
    from hypothesis import given, strategies as st
    from pyvmm.testing import example_database_path, fuzz_settings

    def test_where_examples_go():
        print("database:", example_database_path())

    @fuzz_settings(max_examples=50)
    @given(st.integers())
    def test_fails(value):
        assert value < 10
""")


def test_a_user_s_failing_examples_stay_in_the_user_s_project(tmp_path):
    project = tmp_path / "project"
    project.mkdir()
    (project / "test_mine.py").write_text(USER_TEST)
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-s", "-p", "no:cacheprovider",
                             "test_mine.py"], cwd=project, capture_output=True, timeout=120)
    output = result.stdout.decode()
    assert result.returncode == 1 and "1 failed, 1 passed" in output, output
    database = project / ".hypothesis" / "examples"
    assert f"database: {database}\n" in output
    assert any(path.is_file() for path in database.rglob("*"))       # the failure was kept there
    assert not str(database).startswith(PACKAGE_TREE + os.sep)
