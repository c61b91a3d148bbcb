"""Finding the bundled tiny test guests (built from guests/ with make).

An installed pyvmm carries them in pyvmm/guests/; in a source checkout
they are built on first use into guests/build/ with the machine's
gcc/as/ld.
"""

import fcntl
import os

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
