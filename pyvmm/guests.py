"""Finding the bundled tiny test guests (built from guests/ with make).

An installed pyvmm carries them in pyvmm/guests/, with guests/README.md;
in a source checkout they are built on first use into guests/build/ with
the machine's gcc/as/ld. What each one shows, and how it is booted, comes
from the table in guests/README.md (catalogue()), the one description of
them.
"""

import fcntl
import os
import re

PACKAGE_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "guests")
SOURCE_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "guests")
BUILD_DIR = os.path.join(SOURCE_DIR, "build")

# The guest `pyvmm run` boots when no kernel is given (a multiboot kernel).
DEFAULT_GUEST = "hello.bin"


class GuestNotFound(FileNotFoundError):
    pass


STAMP = os.path.join(BUILD_DIR, ".built")
# What make reads: a change to anything else (README, scripts) needs no rebuild.
MAKE_INPUTS = (".S", ".c", ".h", ".ld", "Makefile")


def build():
    """Runs `make` in the source checkout's guests/ (serialised by a lock)."""
    import subprocess   # only a checkout that needs a rebuild pays for it
    os.makedirs(BUILD_DIR, exist_ok=True)
    with open(os.path.join(BUILD_DIR, ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        result = subprocess.run(["make", "-s", "-C", SOURCE_DIR], capture_output=True, text=True)
        if result.returncode == 0:
            with open(STAMP, "w"):
                pass
    if result.returncode:
        raise GuestNotFound(f"building the test guests failed:\n{result.stderr.strip()}")


def _is_stale(built):
    """True when `built` is missing or a make input changed since the last build."""
    try:
        built_time = min(os.stat(built).st_mtime, os.stat(STAMP).st_mtime)
    except FileNotFoundError:
        return True
    for directory, subdirectories, files in os.walk(SOURCE_DIR):
        subdirectories[:] = [name for name in subdirectories if name != "build"]
        for name in files:
            if name.endswith(MAKE_INPUTS) and \
                    os.stat(os.path.join(directory, name)).st_mtime > built_time:
                return True
    return False


def path(name):
    """The path of the bundled guest `name` (e.g. "hello.bin")."""
    installed = os.path.join(PACKAGE_DIR, name)
    if os.path.exists(installed):
        return installed
    if os.path.exists(os.path.join(SOURCE_DIR, "Makefile")):
        if _is_stale(os.path.join(BUILD_DIR, name)):
            build()
        built = os.path.join(BUILD_DIR, name)
        if os.path.exists(built):
            return built
    raise GuestNotFound(f"no bundled guest named {name!r}")


# The guest table of guests/README.md, shipped beside the installed guests.
README = "README.md"
# Flat binaries with no header to detect, by the table's "mode" column.
RAW_MODES = (("16-bit real mode", "real"), ("64-bit flat binary", "long"))
_CELL_SEPARATOR = re.compile(r"(?<!\\)\|")


class Guest:
    """One row of the guest table: `name` (the file name without its
    extension, where that is unique), `file`, `shows` (one line for people)
    and `raw_mode` (None when the loader detects the format)."""

    def __init__(self, name, file, shows, raw_mode):
        self.name, self.file, self.shows, self.raw_mode = name, file, shows, raw_mode

    def __repr__(self):
        return f"Guest({self.name!r}, {self.file!r}, raw_mode={self.raw_mode!r})"


def _readme():
    for directory in (PACKAGE_DIR, SOURCE_DIR):
        candidate = os.path.join(directory, README)
        if os.path.exists(candidate):
            return candidate
    raise GuestNotFound("the bundled guests' README.md is missing from this installation")


def _table_rows(text):
    """The cells of each row of the first table after "## The guests", by column name."""
    section = text.split("\n## The guests\n", 1)[-1]
    header, rows = None, []
    for line in section.split("\n"):
        if not line.startswith("|"):
            if header is not None:
                break
            continue
        cells = [cell.strip().replace("\\|", "|") for cell in _CELL_SEPARATOR.split(line.strip())[1:-1]]
        if header is None:
            header = cells
        elif not all(set(cell) <= set("-: ") for cell in cells):
            rows.append(dict(zip(header, cells)))
    return rows


def catalogue():
    """Every bundled guest, in the table's order."""
    with open(_readme(), encoding="utf-8") as readme:
        rows = _table_rows(readme.read())
    files = [row["file"].strip("`") for row in rows]
    stems = [os.path.splitext(file)[0] for file in files]
    guests = []
    for row, file, stem in zip(rows, files, stems):
        mode = row.get("mode", "")
        raw_mode = next((raw for prefix, raw in RAW_MODES if mode.startswith(prefix)), None)
        name = stem if stems.count(stem) == 1 else file
        guests.append(Guest(name, file, row.get("shows", ""), raw_mode))
    return guests


def find(name):
    """The bundled guest called `name` (its name or its file name)."""
    guests = catalogue()
    for guest in guests:
        if name in (guest.name, guest.file):
            return guest
    raise GuestNotFound(f"no bundled guest named {name!r} (`pyvmm guests` lists them: "
                        f"{', '.join(guest.name for guest in guests)})")
