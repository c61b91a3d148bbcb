"""The bundled guests by name: `pyvmm guests` and `pyvmm run --guest NAME`,
both read from the one table in guests/README.md."""

import os
import subprocess
import sys

import pytest

from pyvmm import guests
from pyvmm.arch.x86_64 import layout
from pyvmm.loader import LoaderError, LoadOptions, load_kernel
from pyvmm.memory import GuestMemory

CATALOGUE = guests.catalogue()


def pyvmm(*args):
    return subprocess.run([sys.executable, "-m", "pyvmm", *args], capture_output=True, timeout=60)


def test_every_guest_the_makefile_builds_has_a_row_saying_what_it_shows():
    built_dir = os.path.dirname(guests.path(guests.DEFAULT_GUEST))
    built = {name for name in os.listdir(built_dir) if name.endswith((".bin", ".elf"))}
    assert built == {guest.file for guest in CATALOGUE}
    for guest in CATALOGUE:
        assert guest.shows and "|" not in guest.shows, guest


def test_names_are_unique_and_found_by_name_or_file_name():
    names = [guest.name for guest in CATALOGUE]
    assert len(set(names)) == len(names)
    assert guests.find("hello").file == "hello.bin"
    assert guests.find("hello.bin").name == "hello"
    # Two files with one stem keep their extensions.
    assert guests.find("mbinfo.elf").file == "mbinfo.elf"
    with pytest.raises(guests.GuestNotFound, match="mbinfo.bin, mbinfo.elf"):
        guests.find("mbinfo")


@pytest.mark.parametrize("guest", CATALOGUE, ids=lambda guest: guest.name)
def test_every_guest_loads_in_the_mode_its_row_gives(guest):
    with open(guests.path(guest.file), "rb") as image:
        data = image.read()
    memory = GuestMemory(layout.ram_ranges(128 << 20))
    try:
        boot = load_kernel(data, memory, LoadOptions(raw_mode=guest.raw_mode))
        if guest.raw_mode is not None:      # a flat binary: nothing to detect without it
            assert boot.mode == guest.raw_mode
            with pytest.raises(LoaderError, match="unknown kernel format"):
                load_kernel(data, memory, LoadOptions())
    finally:
        memory.close()


def test_the_flat_guests_without_a_header_get_their_mode():
    assert {guest.name: guest.raw_mode for guest in CATALOGUE if guest.raw_mode} == \
        {"real": "real", "long": "long", "triple_real": "real"}


def test_pyvmm_guests_lists_one_line_each():
    result = pyvmm("guests")
    assert (result.returncode, result.stderr) == (0, b"")
    lines = result.stdout.decode().splitlines()
    assert len(lines) == len(CATALOGUE)
    for line, guest in zip(lines, CATALOGUE):
        name, shows = line.split(None, 1)
        assert name == guest.name
        assert shows == guest.shows.replace("`", "")
    assert lines[0].startswith("hello ") and "greeting" in lines[0]


def test_pyvmm_guests_path_prints_the_file_for_gdb():
    result = pyvmm("guests", "--path", "gdbtarget")
    assert result.returncode == 0
    path = result.stdout.decode().strip()
    assert path == guests.path("gdbtarget.elf")
    with open(path, "rb") as elf:
        assert elf.read(4) == b"\x7fELF"


@pytest.mark.parametrize("args, fragment", [
    (["run", "--guest", "nope"], "no bundled guest named 'nope' (`pyvmm guests` lists them: hello, "),
    (["run", "kernel.bin", "--guest", "hello"], "argument --guest: not allowed with argument KERNEL"),
    (["guests", "--path", "nope"], "no bundled guest named 'nope'"),
])
def test_unknown_or_doubled_guest_is_a_usage_error(args, fragment):
    result = pyvmm(*args)
    stderr = result.stderr.decode()
    assert result.returncode == 2
    assert stderr.count("\n") == 1 and stderr.startswith("pyvmm: error: ") and fragment in stderr
