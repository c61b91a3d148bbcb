"""`pyvmm fuzz`: long fuzzing campaigns of the project's fuzz targets (the
hypothesis tests in tests/fuzz: device models, loaders, the snapshot-fuzzing
target...) under HypoFuzz, hypothesis's coverage-guided fuzzing engine.

HypoFuzz is an optional extra (`pip install 'pyvmm[fuzz]'`), kept out of
pyvmm's dependencies: the extra pins its releases under the AGPL-3.0
(25.4.8 and before; later ones are under a non-commercial licence) and the
hypothesis they work with. It fuzzes, on every process asked for, the tests
that take no pytest fixtures, and keeps what it finds in hypothesis's
example database: the directory PYVMM_FUZZ_DATABASE names (--database),
else the repository's .hypothesis/examples. Processes, and machines that
share that directory (NFS...), or a database of hypothesis's own kind set in
a settings profile (a networked one), pool what they find there.

With --seconds, the campaign stops after that long; then pytest replays,
and only replays, what the database holds for the targets (a failure HypoFuzz
found is stored where @given replays it first), and its exit status is the
command's: 0 when nothing stored fails.
"""

import os
import signal
import subprocess
import sys

from . import DATABASE_VARIABLE, REPLAY_VARIABLE

PLUGIN = "pyvmm.testing.hypofuzz_plugin"          # the fuzz profile in HypoFuzz's processes
HYPOFUZZ = [sys.executable, "-c", "import sys; from hypothesis.extra.cli import main; sys.exit(main())", "fuzz"]
STOP_PATIENCE = 15.0


class CampaignError(Exception):
    """The campaign cannot start; the message is for the user."""


def default_targets():
    """tests/fuzz of the source checkout holding this pyvmm, or of the current directory."""
    checkout = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    if not os.path.exists(os.path.join(checkout, "pyproject.toml")):
        checkout = os.getcwd()
    targets = os.path.join(checkout, "tests", "fuzz")
    if not os.path.isdir(targets):
        raise CampaignError("pyvmm fuzz runs the fuzz targets of a pyvmm source checkout (tests/fuzz): "
                            "run it there, or name the target files or directories")
    return [targets]


def run(targets=(), seconds=None, processes=1, database=None, dashboard=False):
    """Fuzzes `targets` (paths pytest takes; default tests/fuzz) on `processes`
    processes, for `seconds` (None: until interrupted), then replays what is
    stored; the exit status."""
    try:
        import hypofuzz  # noqa: F401
    except ImportError:
        raise CampaignError("pyvmm fuzz needs HypoFuzz: pip install 'pyvmm[fuzz]' (HypoFuzz is "
                            "AGPL-3.0, an optional extra)") from None
    targets = list(targets) or default_targets()
    env = dict(os.environ)
    if database is not None:
        env[DATABASE_VARIABLE] = os.path.abspath(database)
    env.pop(REPLAY_VARIABLE, None)
    command = HYPOFUZZ + ["-n", str(processes), "--dashboard" if dashboard else "--no-dashboard", "--",
                          "-p", PLUGIN, *targets]
    campaign = subprocess.Popen(command, env=env, start_new_session=True)
    stopped = False
    try:
        campaign.wait(timeout=seconds)
    except subprocess.TimeoutExpired:
        stopped = True
    except KeyboardInterrupt:
        stopped = True
    finally:
        if campaign.poll() is None:
            _stop(campaign)
    print(f"pyvmm fuzz: replaying what the database holds ({env.get(DATABASE_VARIABLE) or 'the repository'})",
          file=sys.stderr, flush=True)
    env[REPLAY_VARIABLE] = "1"
    replay = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *targets], env=env,
                            check=False)
    if replay.returncode not in (0, 5):                 # 5: pytest collected nothing
        return replay.returncode
    if stopped or campaign.returncode in (0, -signal.SIGINT):
        return 0
    return campaign.returncode                          # HypoFuzz itself failed


def _stop(campaign):
    """SIGINT to the campaign's process group (HypoFuzz's workers stop and
    save), then SIGKILL after STOP_PATIENCE seconds."""
    for signo, patience in ((signal.SIGINT, STOP_PATIENCE), (signal.SIGKILL, STOP_PATIENCE)):
        try:
            os.killpg(campaign.pid, signo)
        except ProcessLookupError:
            return
        try:
            campaign.wait(timeout=patience)
            return
        except subprocess.TimeoutExpired:
            continue
