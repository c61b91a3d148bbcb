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

SVM test host (pyvmm.testing.svm), needs QEMU: SvmHost boots a Linux
with a real SVM-backed /dev/kvm under QEMU/TCG and runs commands there with
this checkout and interpreter; run_linux_script runs a shell script in a
Linux guest that pyvmm boots inside it. See README, "Where the tests run".

Snapshot fuzzing (pyvmm.testing.snapshot_fuzz), needs /dev/kvm:

    SnapshotFuzzer(vm_config, timeout=1.0) boots a guest to its first park,
        checkpoints it there, and run(data) -> FuzzOutcome runs one example
        from that checkpoint: the input written into the guest's buffer, the
        guest run to its next park (or end, or timeout), the VM reset
        before the next (Machine.checkpoint/reset). See snapshot_fuzz.py
        for the guest's side and guests/fuzz/ for the bundled target.

Virtio (pyvmm.testing.virtio, no KVM; pyvmm.testing.virtio_kvm, with KVM):

    VirtioBench(device) runs a VirtioDevice behind its MMIO transport with
    guest RAM, a test context and a Driver; hostile_chains(), chain_specs()
    and driver_actions() are strategies for rings and register sequences;
    replay_rings_on_kvm() and run_block_program() do the same through a
    real guest (see those modules).

Settings: settings_profile() registers (and returns the name of) the
"pyvmm-fuzz" hypothesis profile, whose example database is hypothesis's
usual .hypothesis/examples in the current directory (where the tests run,
never inside the installed pyvmm), so a failing example is replayed first
by the next run; fuzz_settings(**overrides) is a settings object based on
it, for use as a decorator.

pyvmm.testing needs hypothesis: `pip install 'pyvmm[test]'`.
"""

from __future__ import annotations

import os

try:
    import hypothesis  # noqa: F401  (every strategy is built on it)
except ImportError as missing:
    raise ImportError("pyvmm.testing needs hypothesis, which is not installed: "
                      "pip install 'pyvmm[test]' (or pip install hypothesis)",
                      name="hypothesis") from missing

from .harness import (Event, InvariantViolation, Outcome, Placement, Report, Rig, Sentinel,
                      assert_same_reports, compare_reports, drive)
from .replay import ReplayError, encode_program, replay_on_kvm
from .snapshot_fuzz import FuzzTargetError, Outcome as FuzzOutcome, SnapshotFuzzer
from .strategies import (MMIO, PIO, READ, WRITE, Access, access_sequences, accesses_for,
                         addresses_around, mmio_accesses, port_accesses)

PROFILE = "pyvmm-fuzz"
# Multiplies every fuzz_settings max_examples, for long runs (e.g. PYVMM_FUZZ_SCALE=20).
SCALE_VARIABLE = "PYVMM_FUZZ_SCALE"
# Where the fuzz profile keeps its examples, instead of the repository's (a shared directory).
DATABASE_VARIABLE = "PYVMM_FUZZ_DATABASE"
# Set: the fuzz profile only replays what its database holds (pyvmm fuzz's check).
REPLAY_VARIABLE = "PYVMM_FUZZ_REPLAY"


def example_database_path() -> str:
    """Where the fuzz profile keeps hypothesis's examples: $PYVMM_FUZZ_DATABASE
    (a directory several campaigns share), else .hypothesis/examples in the
    current directory, as hypothesis does by default (a project's tests keep
    their own failures; pyvmm's package tree is never written to)."""
    return os.environ.get(DATABASE_VARIABLE) or os.path.join(os.getcwd(), ".hypothesis", "examples")


def settings_profile(name: str = PROFILE, **overrides) -> str:
    """Registers the fuzz profile and returns its name (settings.load_profile
    takes it): examples in example_database_path(), no
    deadline (KVM runs vary), @reproduce_failure blobs printed."""
    from hypothesis import HealthCheck, Phase, settings
    from hypothesis.database import DirectoryBasedExampleDatabase

    options = dict(
        database=DirectoryBasedExampleDatabase(example_database_path()),
        deadline=None,
        print_blob=True,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    if os.environ.get(REPLAY_VARIABLE):
        options["phases"] = (Phase.explicit, Phase.reuse)
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
    "FuzzOutcome", "FuzzTargetError", "ReplayError", "Report", "Rig", "Sentinel", "SnapshotFuzzer", "WRITE", "access_sequences", "accesses_for",
    "addresses_around", "assert_same_reports", "compare_reports", "drive", "encode_program",
    "example_database_path", "fuzz_settings", "mmio_accesses", "port_accesses",
    "replay_on_kvm", "settings_profile",
]
