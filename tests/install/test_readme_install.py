"""README's install command, verbatim, in a copy of the source, with the
system's python3 (Debian's refuses system-wide pip installs: PEP 668); then
what a user does next, away from the checkout; and the wheel's contents."""

import os
import pathlib
import re
import shutil
import subprocess
import zipfile

import pytest

from pyvmm import guests

pytestmark = [pytest.mark.install, pytest.mark.kvm]      # the command boots the hello guest

ROOT = pathlib.Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()
INSTALL = re.search(r"Install and boot the bundled `hello` guest:\n\n```sh\n(.*?)\n```", README).group(1)
HELLO = b"Hello from a pyvmm guest!\n"


def source_files():
    """The checkout's files as git sees them (tracked, or new and not ignored)."""
    listed = subprocess.run(["git", "-C", str(ROOT), "ls-files", "-z", "--cached", "--others",
                             "--exclude-standard"], capture_output=True, check=True).stdout
    return [name for name in listed.decode().split("\0") if name and (ROOT / name).is_file()]


def user_environment():
    """A shell whose python3 is the system's, with nothing of this test run's Python."""
    env = {name: value for name, value in os.environ.items()
           if name.startswith("PIP_") or name in ("HOME", "LANG", "TMPDIR", "CI")}
    env["PATH"] = "/usr/bin:/bin"
    return env


@pytest.fixture(scope="module")
def checkout(tmp_path_factory):
    copy = tmp_path_factory.mktemp("user") / "pyvmm"
    for name in source_files():
        target = copy / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, target)
    result = subprocess.run(["bash", "-c", INSTALL], cwd=copy, env=user_environment(),
                            capture_output=True, timeout=900)
    return copy, result


def run(checkout, *args, cwd):
    return subprocess.run([str(checkout / ".venv" / "bin" / "pyvmm"), *args], cwd=cwd,
                          capture_output=True, timeout=120)


def test_readme_install_command_boots_hello_with_the_system_python(checkout):
    copy, result = checkout
    assert result.returncode == 0, result.stderr.decode()[-3000:]
    assert result.stdout.endswith(HELLO)
    base = subprocess.run([str(copy / ".venv" / "bin" / "python"), "-c",
                           "import sys; print(sys.base_prefix)"], capture_output=True, text=True)
    assert base.stdout.strip() == "/usr"                 # the venv is the system python's


def test_bundled_guests_by_name_after_a_plain_install(checkout, tmp_path):
    copy, result = checkout
    assert result.returncode == 0
    listing = run(copy, "guests", cwd=tmp_path)
    assert listing.returncode == 0
    assert [line.split()[0] for line in listing.stdout.decode().splitlines()] == \
        [guest.name for guest in guests.catalogue()]
    path = run(copy, "guests", "--path", "gdbtarget", cwd=tmp_path).stdout.decode().strip()
    assert path.startswith(str(copy / ".venv")) and path.endswith("/pyvmm/guests/gdbtarget.elf")
    assert run(copy, "run", "--guest", "gdbtarget", cwd=tmp_path).returncode == 85
    assert run(copy, "run", "--guest", "real", cwd=tmp_path).returncode == 0x21


def test_the_installed_version_is_the_package_version(checkout, tmp_path):
    copy, _ = checkout
    metadata = subprocess.run([str(copy / ".venv" / "bin" / "python"), "-c",
                               "import importlib.metadata as m, pyvmm; "
                               "print(m.version('pyvmm'), pyvmm.__version__)"],
                              cwd=tmp_path, capture_output=True, text=True)
    installed, package = metadata.stdout.split()
    assert installed == package
    assert run(copy, "--version", cwd=tmp_path).stdout.decode() == f"pyvmm {package}\n"


def test_the_wheel_ships_the_guests_and_their_readme_but_no_build_objects(checkout, tmp_path):
    copy, _ = checkout
    built = subprocess.run([str(copy / ".venv" / "bin" / "pip"), "wheel", "--no-deps", "-q", "-w",
                            str(tmp_path), "."], cwd=copy, env=user_environment(),
                           capture_output=True, timeout=900)
    assert built.returncode == 0, built.stderr.decode()[-3000:]
    (wheel,) = tmp_path.glob("pyvmm-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    shipped = {name.split("/", 2)[2] for name in names if name.startswith("pyvmm/guests/")}
    assert shipped == {guest.file for guest in guests.catalogue()} | {"README.md"}
    assert not [name for name in names if name.endswith((".o", ".d", ".a")) or "/obj/" in name]
