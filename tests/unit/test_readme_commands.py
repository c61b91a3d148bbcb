"""README.md and the tool agree: the `pyvmm run` synopsis lists every option
`pyvmm run --help` lists, with the same value names, and CI runs README's
two commands verbatim, with the system's python3, after installing the
packages README tells a user to install."""

import pathlib
import re
import shlex

from pyvmm.cli import build_parser

ROOT = pathlib.Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()
CI = (ROOT / ".ci" / "run").read_text()


def run_parser():
    commands = next(action for action in build_parser()._actions if action.choices)
    return commands.choices["run"]


def help_forms():
    """Each option of `pyvmm run --help` as its usage line shows it."""
    forms = set()
    for action in run_parser()._actions:
        if "-h" in action.option_strings:
            continue
        if not action.option_strings:
            forms.add(action.metavar)
        elif action.nargs == 0:
            forms.add(action.option_strings[0])
        elif action.nargs == "?":
            forms.add(f"{action.option_strings[0]} [{action.metavar}]")
        else:
            forms.add(f"{action.option_strings[0]} {action.metavar}")
    return forms


def top_level_groups(text):
    """The [...] groups of a synopsis, outermost only."""
    groups, depth, start = [], 0, 0
    for index, char in enumerate(text):
        if char == "[":
            if depth == 0:
                start = index + 1
            depth += 1
        elif char == "]":
            depth -= 1
            if depth == 0:
                groups.append(text[start:index])
    return groups


def readme_synopsis_forms():
    section = README.split("## `pyvmm run`", 1)[1]
    synopsis = re.search(r"```\n(pyvmm run .*?)```", section, re.S).group(1)
    forms = set()
    for group in top_level_groups(" ".join(synopsis.split())):
        for alternative in group.split(" | "):             # [KERNEL | --guest NAME]
            forms.add(re.sub(r"^(--[\w-]+)=", r"\1 ", alternative.strip()))
    return forms


def test_the_run_synopsis_lists_every_option_of_the_help_with_its_value_names():
    assert readme_synopsis_forms() == help_forms()


def test_the_help_shows_value_names_as_written():
    usage = " ".join(run_parser().format_usage().split())
    for form in help_forms():       # argparse rewrites some (spaces inside brackets): not these
        assert f"[{form}]" in usage or form == "KERNEL", form


def sh_block_after(heading):
    return re.search(r"```sh\n(.*?)\n```", README.split(heading, 1)[1], re.S).group(1)


INSTALL = sh_block_after("Install and boot the bundled `hello` guest:")
TEST = sh_block_after("Install and run the test suite:")


def test_the_readme_commands_make_their_own_virtual_environment():
    for command in (INSTALL, TEST):
        assert command.startswith("python3 -m venv .venv && .venv/bin/pip install ")
    assert INSTALL.endswith(" && .venv/bin/pyvmm run")
    assert TEST.endswith(" && .venv/bin/python -m pytest")


def test_ci_runs_both_readme_commands_verbatim_with_the_system_python():
    lines = [line.strip() for line in CI.splitlines()]
    assert INSTALL in lines and TEST in lines
    path_line = next(line for line in lines if line.startswith("export PATH="))
    assert lines.index(path_line) < lines.index(INSTALL) < lines.index(TEST)
    assert path_line.startswith('export PATH="/usr/bin:')             # Debian's python3 first


def test_ci_installs_the_packages_readme_names():
    named = set(re.search(r"`sudo apt-get install ([^`]+)`", " ".join(README.split())).group(1).split())
    assert {"python3-venv", "python3-dev", "gcc", "make", "libseccomp-dev"} <= named
    packages_line = next(line for line in CI.splitlines() if line.startswith("PACKAGES="))
    installed = set(shlex.split(packages_line.partition("=")[2])[0].split())
    assert named <= installed
