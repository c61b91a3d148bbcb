"""`pyvmm stats FILE` on anything that is not a trace: one `pyvmm: error:` line naming the file, status 2.

A trace is read one bounded line at a time: /dev/zero (one endless line)
or a binary file cannot make pyvmm read unbounded data into memory.
"""

import json
import resource
import subprocess
import sys

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from pyvmm import cli
from pyvmm.run import trace

ADDRESS_SPACE_LIMIT = 1 << 30


def _limit_address_space():
    resource.setrlimit(resource.RLIMIT_AS, (ADDRESS_SPACE_LIMIT, ADDRESS_SPACE_LIMIT))


def stats(path, *args, timeout=30):
    return subprocess.run([sys.executable, "-m", "pyvmm", "stats", str(path), *args],
                          capture_output=True, timeout=timeout, preexec_fn=_limit_address_space)


def assert_error_naming(result, path, fragment=""):
    stderr = result.stderr.decode(errors="replace")
    lines = stderr.strip().splitlines()
    assert result.returncode == 2, stderr
    assert len(lines) == 1 and lines[0].startswith("pyvmm: error: "), stderr
    assert str(path) in lines[0] and fragment in lines[0], stderr


@pytest.mark.parametrize("content, fragment", [
    (b'{"reason":"io","handle_ns":[1]}\n', "handle_ns"),
    (b'{"reason":"io","port":"0x3f8"}\n', "port"),
    (b'{"reason":"mmio","addr":-1}\n', "addr"),
    (b'{"reason":7}\n', "reason"),
    (b'{"reason":"io","handle_ns":true}\n', "handle_ns"),
    (b'{"reason":"io","dir":{"a":1}}\n', "dir"),
    (b'[' * 60000 + b'\n', "not a JSON trace record"),
    (b'\x7fELF\x02\x01\x01\0\0\0\xff\xfe\x00\x81\n', "not UTF-8"),
    (b'{"reason":"io"}\n' + b'x' * (trace.MAX_LINE + 10), "longer than"),
])
def test_a_malformed_trace_is_one_error_line(tmp_path, content, fragment):
    path = tmp_path / "trace.jsonl"
    path.write_bytes(content)
    assert_error_naming(stats(path), path, fragment)


def test_dev_zero_is_refused_without_reading_it_all():
    assert_error_naming(stats("/dev/zero"), "/dev/zero", "longer than")


def test_a_binary_file_names_the_file(tmp_path):
    path = tmp_path / "kernel.bin"
    path.write_bytes(bytes(range(256)) * 64)
    assert_error_naming(stats(path), path)


def test_a_directory_names_the_file(tmp_path):
    assert_error_naming(stats(tmp_path), tmp_path, "cannot read trace")


records = st.fixed_dictionaries(
    {"reason": st.sampled_from(["io", "mmio", "hlt"])},
    optional={"port": st.integers(0, 0xFFFF), "addr": st.integers(0, 2**64 - 1),
              "dir": st.sampled_from(["in", "out"]), "dev": st.text(max_size=10),
              "handle_ns": st.integers(0, 10**9)})
junk = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False)
                    | st.text(max_size=5),
                    lambda inner: st.lists(inner, max_size=3)
                    | st.dictionaries(st.text(max_size=5), inner, max_size=3), max_leaves=6)


@settings(max_examples=150, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(good=st.lists(records, max_size=6), bad=st.one_of(st.none(), st.dictionaries(
    st.sampled_from(["reason", "port", "addr", "dir", "dev", "handle_ns"]), junk, min_size=1)))
def test_any_record_is_summarised_or_refused_in_one_line(tmp_path, capsys, good, bad):
    path = tmp_path / "fuzzed.jsonl"
    lines = [json.dumps(record) for record in good]
    if bad is not None:
        lines.append(json.dumps(bad))
    path.write_text("\n".join(lines) + "\n")
    status = cli.main(["stats", str(path), "--json"])
    out, err = capsys.readouterr()
    if status == 0:
        summary = json.loads(out)
        assert summary["exits"] == len(lines)
        assert sum(row["count"] for row in summary["reasons"]) == len(lines)
    else:
        assert status == 2
        assert err.count("\n") == 1 and err.startswith(f"pyvmm: error: {path}:{len(lines)}: ")
