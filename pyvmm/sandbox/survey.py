"""Which system calls each thread role makes, to derive pyvmm.sandbox.roles.

    python -m pyvmm.sandbox.survey -- python -m pytest -q -p no:cacheprovider tests/kvm
    python -m pyvmm.sandbox.survey --calls calls.txt -- pyvmm run KERNEL

The command runs with PYVMM_SECCOMP_SURVEY set: every thread a machine
confines gets a filter that lets only futex and write through unreported
(what handing the filter to the log listener takes); every other call goes
to the listener, which records it and lets it continue. Each thread reports
each (call, request) once. Then, per role: the calls seen, those the role
does not allow (to add, or to remove from the code that makes them; rules a
thread gets at run time, such as roles.in_directory, show here too), and
those it allows that nothing made (candidates to drop, if the command
exercised the role fully).
"""

import argparse
import collections
import os
import subprocess
import sys
import tempfile

from .confinement import SURVEY_ENV, request_names
from .roles import ROLES, WORD, ioctl_number


def allowed(role, call, detail):
    calls = role.calls
    if call == "ioctl":
        return any(ioctl_number(name) == detail & WORD for name in calls.ioctls)
    return call in calls.calls or any(name == call for name, _ in calls.rules)


def describe(call, detail):
    if call == "ioctl":
        return f"ioctl {request_names().get(detail & WORD, hex(detail))}"
    return f"fcntl {detail}" if call == "fcntl" else call


def summarize(lines):
    seen = collections.defaultdict(collections.Counter)
    for line in lines:
        role, call, detail = line.split()
        seen[role][(call, int(detail, 16))] += 1
    report = []
    for name in sorted(seen):
        role = ROLES[name]
        calls = seen[name]
        report.append(f"{name}: {len(calls)} distinct calls")
        for (call, detail), threads in sorted(calls.items()):
            mark = " " if allowed(role, call, detail) else "+"
            report.append(f"  {mark} {describe(call, detail):40} {threads} thread(s)")
        made = {call for call, _ in calls}
        requests = {detail & WORD for call, detail in calls if call == "ioctl"}
        unused = sorted(call for call in role.calls.calls | {c for c, _ in role.calls.rules}
                        if call not in made)
        unused += sorted(f"ioctl {request}" for request in role.calls.ioctls
                         if ioctl_number(request) not in requests)
        if unused:
            report.append(f"  - allowed, not made: {', '.join(unused)}")
    return "\n".join(report) + "\n(+: not in the role's list)"


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m pyvmm.sandbox.survey", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", help="keep the raw record (ROLE CALL DETAIL per line) here")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- COMMAND [ARGS...]")
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("give the command to survey after --")
    path = os.path.abspath(args.calls) if args.calls else tempfile.mktemp(prefix="pyvmm-survey-")
    open(path, "w").close()
    status = subprocess.call(command, env=dict(os.environ, **{SURVEY_ENV: path}))
    with open(path) as calls:
        print(summarize(calls))
    if not args.calls:
        os.unlink(path)
    return status


if __name__ == "__main__":
    sys.exit(main())
