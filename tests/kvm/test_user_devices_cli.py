"""A user's device from the command line, as a user runs it: imported from
the current directory, refused with the reason where it can never be
reached, reported by name when it fails; and a hook's stop wins."""

import subprocess
import sys

import pytest

from pyvmm import guests
from pyvmm.config import VmConfig
from pyvmm.machine import Machine

# The installed `pyvmm` script: unlike `python -m`, Python puts no current
# directory on the path for it (-I leaves it off for -c too).
PYVMM = [sys.executable, "-I", "-c", "import sys; from pyvmm.cli import main; sys.exit(main())"]

SCRATCH = '''
class Scratch:
    """Reads `fill` everywhere; writes are dropped."""
    def __init__(self, fill=0):
        self.fill = fill
    def read(self, offset, size):
        return bytes([self.fill]) * size
    def write(self, offset, data):
        pass

class Broken:
    def read(self, offset, size):
        raise RuntimeError("model bug")
    def write(self, offset, data):
        raise KeyError("no such register")
'''


def pyvmm_in(directory, *args):
    return subprocess.run([*PYVMM, *args], cwd=directory, capture_output=True, timeout=60)


@pytest.fixture
def workdir(tmp_path):
    (tmp_path / "mydev.py").write_text(SCRATCH)
    return tmp_path


def test_a_device_module_in_the_current_directory_is_imported(workdir):
    # exits.bin reads its ending from port 0x50f: 2 is `outb 0x42 -> 0xf4`.
    result = pyvmm_in(workdir, "run", "--guest", "exits", "--device", "mydev:Scratch@0x500-0x50f,fill=2")
    assert (result.returncode, result.stderr) == ((0x42 << 1) | 1, b"")


def test_the_exit_status_is_the_guest_status_modulo_256(workdir):
    # Ending 3 is `outw 0x0107 -> 0xf4`: status 0x20f, which a process exit status cannot hold.
    result = pyvmm_in(workdir, "run", "--guest", "exits", "--device", "mydev:Scratch@0x500-0x50f,fill=3")
    assert (result.returncode, result.stderr) == (0x20F % 256, b"")


def test_a_device_that_raises_is_a_device_failure_naming_it_and_the_access(workdir):
    result = pyvmm_in(workdir, "run", "--guest", "exits", "--device", "mydev:Broken@0x500-0x50f",
                      "--exit-path", "python")
    assert result.returncode == 125
    assert result.stderr.decode().splitlines() == [
        "pyvmm: device failure: device 'mydev:Broken' failed on a 1-byte write at port 0x500: "
        "KeyError: 'no such register'"]
    result = pyvmm_in(workdir, "run", "--guest", "exits", "--device", "mydev:Scratch@0x500-0x50f",
                      "--device", "mydev:Broken@mmio:0xd0000000-0xd0000fff")
    assert result.returncode == 125
    assert result.stderr.decode().splitlines() == [
        "pyvmm: device failure: device 'mydev:Broken' failed on a 1-byte write at MMIO address "
        "0xd0000000: KeyError: 'no such register'"]


@pytest.mark.parametrize("where, what", [
    ("0x1000-0x1fff", "guest RAM"),
    ("0x7fff000-0x8000fff", "guest RAM"),               # straddles the end of 128M
    ("0xfec00000-0xfec00fff", "the IOAPIC"),
    ("0xfee00800-0xfee00803", "the local APIC"),
])
def test_an_mmio_device_where_kvm_never_exits_is_one_error_line(workdir, where, what):
    result = pyvmm_in(workdir, "run", "--device", f"mydev:Scratch@mmio:{where}")
    stderr = result.stderr.decode()
    assert result.returncode == 2, stderr
    assert stderr.count("\n") == 1 and stderr.startswith("pyvmm: error: --device: cannot register "
                                                         "mydev:Scratch at ")
    assert f"it overlaps {what} " in stderr and "which KVM handles itself" in stderr


def test_a_before_hook_stop_wins_over_the_guest_debug_exit():
    config = VmConfig(kernel=guests.path("compute.elf"), serial="buffer", timeout=30)
    with Machine(config) as machine:
        machine.add_hook(lambda event: event.stop(7, "mine"), when="before", ports={0xF4})
        result = machine.run()
    assert (result.status, result.reason, result.message) == (7, "hook", "mine")
    assert machine.serial_output.startswith(b"fnv1a=")        # the guest did run up to its exit
