"""pyvmm.testing: hypothesis strategies and harnesses for fuzzing devices.

Strategies (pyvmm.testing.strategies) generate guest accesses aimed at a
device range and its surroundings:

    Access(kind, direction, address, size, count=1, data=b"")
        one guest access: "pio" or "mmio", "read" or "write"; port I/O sizes
        1, 2, 4 (count > 1: rep ins/outs), MMIO sizes 1, 2, 4, 8
    port_accesses(base, length, margin=8, sizes=(1, 2, 4), max_count=4)
    mmio_accesses(base, length, margin=8, sizes=(1, 2, 4, 8))
    accesses_for(ranges, margin=8)     around any of several ranges
    access_sequences(*strategies, max_size=20)

Harness (pyvmm.testing.harness), no KVM needed:

    drive(target, accesses) -> Report
        runs a device (base=, length=, kind=), Placement(s), a Bus, a bus
        pair or a Rig through the accesses, with sentinel recorders around
        every device, and raises InvariantViolation (an AssertionError) when
        the device contract breaks: an exception out of an access (devices
        have no documented error; DeviceError and BusError are bugs), a read
        of the wrong size, or an access that reaches the wrong device.
    Placement(kind, base, length, device, name=None), Rig(placements, margin)
    Report(outcomes, run, inspected): per access (Outcome) the bytes read
        and the device accesses (Event) it caused; run is the RunResult of
        a KVM replay; assert_same_reports(a, b) compares two reports.
    Accesses are split as the CPU and KVM split them before pyvmm sees
    them: rep ins/outs into elements, MMIO that crosses a 4 KiB page into
    the parts on either side (so devices can see MMIO sizes 3, 5, 6, 7).

Replay (pyvmm.testing.replay), needs /dev/kvm:

    replay_on_kvm(accesses, devices=(), vm_config=None, setup=None, inspect=None) -> Report
        the same sequence performed by the replay.bin guest with the real
        instructions, through real VM exits, in a Machine (devices wrapped
        in probes, sentinels around them, a marker port write after each
        access so every device access is attributed to its access); see
        replay.py for the program format and the limitations (MMIO below
        4 GiB and outside RAM, nothing that collides with the Machine's
        own devices).  Raises ReplayError when the guest did not finish.

Virtio (pyvmm.testing.virtio, no KVM; pyvmm.testing.virtio_kvm, with KVM):

    VirtioBench(device) runs a VirtioDevice behind its MMIO transport with
    guest RAM, a test context and a Driver; hostile_chains(), chain_specs()
    and driver_actions() are strategies for rings and register sequences;
    replay_rings_on_kvm() and run_block_program() do the same through a
    real guest (see those modules).

Settings: settings_profile() registers (and returns the name of) the
"pyvmm-fuzz" hypothesis profile, whose example database lives in the
repository's ignored .hypothesis/examples, so a failing example is replayed
first by the next run; fuzz_settings(**overrides) is a settings object
based on it, for use as a decorator.
"""

from __future__ import annotations

import os

from .harness import (Event, InvariantViolation, Outcome, Placement, Report, Rig, Sentinel,
                      assert_same_reports, compare_reports, drive)
from .replay import ReplayError, encode_program, replay_on_kvm
from .strategies import (MMIO, PIO, READ, WRITE, Access, access_sequences, accesses_for,
                         addresses_around, mmio_accesses, port_accesses)

PROFILE = "pyvmm-fuzz"
# Multiplies every fuzz_settings max_examples, for long runs (e.g. PYVMM_FUZZ_SCALE=20).
SCALE_VARIABLE = "PYVMM_FUZZ_SCALE"


def repository_root() -> str:
    """The source checkout holding this pyvmm (where pyproject.toml is), or the
    current directory for an installed pyvmm."""
    here = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    if os.path.exists(os.path.join(here, "pyproject.toml")):
        return here
    return os.getcwd()


def example_database_path() -> str:
    """Where the fuzz profile keeps hypothesis's examples: <repo>/.hypothesis/examples."""
    return os.path.join(repository_root(), ".hypothesis", "examples")


def settings_profile(name: str = PROFILE, **overrides) -> str:
    """Registers the fuzz profile and returns its name (settings.load_profile
    takes it): examples in the repository's .hypothesis/examples, no
    deadline (KVM runs vary), @reproduce_failure blobs printed."""
    from hypothesis import HealthCheck, settings
    from hypothesis.database import DirectoryBasedExampleDatabase

    options = dict(
        database=DirectoryBasedExampleDatabase(example_database_path()),
        deadline=None,
        print_blob=True,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    options.update(overrides)
    settings.register_profile(name, **options)
    return name


def fuzz_settings(**overrides):
    """A hypothesis settings object on the fuzz profile (registered on first
    use); max_examples is scaled by $PYVMM_FUZZ_SCALE when set."""
    from hypothesis import settings

    try:
        parent = settings.get_profile(PROFILE)
    except Exception:
        settings_profile()
        parent = settings.get_profile(PROFILE)
    scale = os.environ.get(SCALE_VARIABLE)
    if scale and "max_examples" in overrides:
        overrides["max_examples"] = max(1, int(overrides["max_examples"] * float(scale)))
    return settings(parent, **overrides)


__all__ = [
    "Access", "Event", "InvariantViolation", "MMIO", "Outcome", "PIO", "Placement", "READ",
    "ReplayError", "Report", "Rig", "Sentinel", "WRITE", "access_sequences", "accesses_for",
    "addresses_around", "assert_same_reports", "compare_reports", "drive", "encode_program",
    "example_database_path", "fuzz_settings", "mmio_accesses", "port_accesses",
    "replay_on_kvm", "repository_root", "settings_profile",
]
