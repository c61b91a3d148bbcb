"""What every command prints: `--version`, and a reader that goes away.

`pyvmm stats FILE --json | head -1` must end as any Unix tool ends when
its reader closes the pipe: quietly, with the status a shell shows for a
tool SIGPIPE ended (128 + 13), never an "internal error".
"""

import json
import os
import signal
import subprocess
import sys

import pytest

import pyvmm

BROKEN_PIPE = 128 + signal.SIGPIPE


def pyvmm_to_closed_pipe(*args):
    """Runs pyvmm with standard output a pipe whose reader is already gone."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        return subprocess.run([sys.executable, "-m", "pyvmm", *args], stdout=write_end,
                              stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, timeout=60)
    finally:
        os.close(write_end)


@pytest.fixture(scope="module")
def big_trace(tmp_path_factory):
    """A trace whose summary is far larger than a pipe holds."""
    path = tmp_path_factory.mktemp("trace") / "trace.jsonl"
    with open(path, "w") as trace:
        for seq in range(20000):
            trace.write(json.dumps({"seq": seq, "reason": "io", "port": seq % 0x10000, "dir": "out",
                                    "handle_ns": 100}) + "\n")
    return path


def test_version_names_the_package_version():
    result = subprocess.run([sys.executable, "-m", "pyvmm", "--version"], capture_output=True, timeout=60)
    assert (result.returncode, result.stdout, result.stderr) == (0, f"pyvmm {pyvmm.__version__}\n".encode(), b"")


@pytest.mark.parametrize("args", [
    ["--version"], ["--help"], ["run", "--help"], ["guests"], ["guests", "--path", "hello"],
    ["stats", "TRACE"], ["stats", "TRACE", "--json"],
], ids=" ".join)
def test_a_closed_output_pipe_ends_the_command_quietly(args, big_trace):
    result = pyvmm_to_closed_pipe(*[str(big_trace) if arg == "TRACE" else arg for arg in args])
    assert (result.returncode, result.stderr.decode()) == (BROKEN_PIPE, "")


def test_head_takes_the_first_line_of_a_json_summary(big_trace):
    command = f"{sys.executable} -m pyvmm stats {big_trace} --json | head -1; echo \"${{PIPESTATUS[0]}}\""
    result = subprocess.run(["bash", "-c", command], capture_output=True, timeout=60)
    assert result.stdout.decode().splitlines() == ["{", str(BROKEN_PIPE)]
    assert result.stderr == b""
