"""The peak RSS of one command, measured for that command alone.

A child's ru_maxrss starts at its parent's RSS when it forks (Linux keeps the
high-water mark across exec), so a command started from pytest, whose RSS
grows over a run, would report pytest's peak. The command is started from a
small launcher instead, which writes its child's peak (KiB) to `report`.
"""

import os
import signal
import subprocess
import sys

_LAUNCHER = """
import resource, subprocess, sys
status = subprocess.call(sys.argv[2:])
with open(sys.argv[1], "w") as report:
    report.write(str(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss))
sys.exit(status if status >= 0 else 128 - status)
"""


def popen(command, report, **options):
    """subprocess.Popen of `command` (its stdio is the launcher's) in a session of its own."""
    return subprocess.Popen([sys.executable, "-c", _LAUNCHER, str(report), *command],
                            start_new_session=True, **options)


def kill(process):
    """Kills the launcher and the command."""
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    process.wait()


def peak_bytes(report):
    """The command's peak RSS, once the launcher has ended."""
    with open(report) as text:
        return int(text.read()) * 1024
