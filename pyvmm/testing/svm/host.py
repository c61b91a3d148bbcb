"""SvmHost: a Linux machine with a real SVM-backed /dev/kvm, in QEMU/TCG.

QEMU's TCG emulates AMD's SVM with nested paging (`-cpu max`); Debian's
generic kernel booted on it (the L1 host) loads kvm-amd. The machine's root
is shared read-only over 9p and an overlay with a tmpfs on top makes it
writable inside (host_init.py), so a command run there sees the same
checkout, virtual environment and caches at the same paths, and whatever it
writes stays in L1's memory, except in the job folder, shared writable at
the same path on both sides.

    with SvmHost() as host:
        result = host.run([sys.executable, "-m", "pytest", "tests/kvm"], cwd=repo, timeout=600)
        result.status, result.stdout, result.stderr

L1 has no network: fetch what a command needs (pyvmm.linux.fetch()) first.
Only one L1 runs on a machine at a time (a lock in the cache folder), since
TCG keeps a core busy per vCPU that has work.

L1 has one vCPU unless asked for more: with two, QEMU 7.2's emulated SVM
sometimes breaks while a 2-vCPU guest boots (L1 triple-faults, or the guest
gets an interrupt twice); README, "Known problems of the SVM test host".
A guest's vCPUs are threads in L1 either way.
"""

import fcntl
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time

from . import assets as host_assets
from . import host_init

QEMU = "qemu-system-x86_64"
BOOT_TIMEOUT = 120          # seconds from QEMU's start to the ready file (about 10 s here)
POLL_SECONDS = 0.05
LOCK_TIMEOUT = 1800         # seconds to wait for another process's L1 to end
# Variables a command inherits from the caller unless `env` replaces them.
INHERITED = ("PATH", "HOME", "LANG", "LC_ALL", "TERM", "CI", "VIRTUAL_ENV", "PYTHONPATH",
             "PYTHONHASHSEED", "PYTHONDONTWRITEBYTECODE", "XDG_CACHE_HOME", "TMPDIR")


class SvmHostError(Exception):
    """The L1 host could not be booted, or died or hung; str() says why, with
    the end of its console."""


class CommandResult:
    def __init__(self, status, stdout, stderr, seconds):
        self.status = status
        self.stdout = stdout
        self.stderr = stderr
        self.seconds = seconds

    @property
    def output(self):
        return self.stdout + self.stderr

    def __repr__(self):
        return (f"CommandResult(status={self.status}, seconds={self.seconds:.1f}, "
                f"stdout={self.stdout[-2000:]!r}, stderr={self.stderr[-2000:]!r})")


def missing():
    """Why an SVM host cannot run here (a one-line reason), or None."""
    if shutil.which(QEMU) is None:
        return f"{QEMU} is not installed (apt-get install qemu-system-x86)"
    if host_assets.cached() is None and not all(map(shutil.which, ("apt-get", "dpkg-deb"))):
        return "the SVM host's kernel comes from Debian's packages: apt-get and dpkg-deb are needed"
    return None


class SvmHost:
    """One L1 host: start() boots it (or use `with`), run()/shell() run
    commands in it, close() powers it off and removes its folder. `cpus`
    is L1's vCPU count, `memory_mib` its RAM (the overlay's writes live
    there too)."""

    def __init__(self, cpus=1, memory_mib=3072, boot_timeout=BOOT_TIMEOUT):
        self.cpus = cpus
        self.memory_mib = memory_mib
        self.boot_timeout = boot_timeout
        self.boot_seconds = None
        self.version = None
        self._qemu = None
        self._folder = None
        self._lock = None
        self._next = 1
        self._saved = ("", "")

    # --- life cycle ---------------------------------------------------------------------

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc):
        self.close()

    @property
    def job_dir(self):
        """The folder shared writable at the same path inside L1."""
        return os.path.join(self._folder, "job")

    @property
    def console_path(self):
        return os.path.join(self._folder, "console.log")

    @property
    def qemu_log_path(self):
        """QEMU's own log: a reset of L1 (a triple fault, say) with its CPU state."""
        return os.path.join(self._folder, "qemu.log")

    def start(self):
        if self._qemu is not None:
            raise SvmHostError("the SVM host is already running")
        assets = host_assets.fetch()
        self._lock = _take_run_lock(os.path.join(host_assets.default_cache_dir(), ".run-lock"))
        try:
            self._folder = tempfile.mkdtemp(prefix="pyvmm-svm-")
            os.mkdir(self.job_dir)
            started = time.monotonic()
            self._qemu = subprocess.Popen(self.qemu_command(assets), stdin=subprocess.DEVNULL,
                                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                          start_new_session=True, preexec_fn=_die_with_parent)
            ready = self._wait_for(os.path.join(self.job_dir, host_init.READY_FILE),
                                   started + self.boot_timeout, "booting")
            if not ready.startswith("ok "):
                raise SvmHostError(f"the SVM host failed to start: {ready.strip()}{self._console_tail()}")
            self.version = ready.split()[1]
            self.boot_seconds = time.monotonic() - started
        except BaseException:
            self.close()
            raise

    def qemu_command(self, assets):
        share = "security_model=none,multidevs=remap"
        return [QEMU, "-accel", "tcg,thread=multi", "-cpu", "max", "-smp", str(self.cpus),
                "-m", str(self.memory_mib), "-nodefaults", "-display", "none", "-no-reboot",
                "-monitor", "none", "-serial", f"file:{self.console_path}",
                "-d", "cpu_reset,guest_errors", "-D", self.qemu_log_path,
                "-kernel", assets.kernel, "-initrd", assets.initramfs,
                "-append", f"console=ttyS0 loglevel=5 panic=-1 {host_init.JOB_PARAMETER}={self.job_dir}",
                "-virtfs", f"local,path=/,mount_tag={host_init.MOUNT_TAG_ROOT},readonly=on,{share}",
                "-virtfs", f"local,path={self.job_dir},mount_tag={host_init.MOUNT_TAG_JOB},{share}"]

    @property
    def alive(self):
        return self._qemu is not None and self._qemu.poll() is None

    def close(self):
        """Powers L1 off (killing QEMU if it does not go), removes the job folder."""
        if self._qemu is not None:
            if self._qemu.poll() is None:
                try:
                    open(os.path.join(self.job_dir, host_init.POWEROFF_FILE), "w").close()
                    self._qemu.wait(5)
                except (OSError, subprocess.TimeoutExpired):
                    os.killpg(self._qemu.pid, signal.SIGKILL)
                    self._qemu.wait()
            self._qemu.stderr.close()
            self._qemu = None
        if self._folder is not None:
            self._saved = (self.console(), self.qemu_log())
            shutil.rmtree(self._folder, ignore_errors=True)
            self._folder = None
        if self._lock is not None:
            self._lock.close()
            self._lock = None

    # --- commands -----------------------------------------------------------------------

    def run(self, argv, timeout=600, cwd=None, env=None):
        """Runs argv inside L1 and returns its CommandResult (status 124 when
        `timeout` expired there). `cwd` defaults to the caller's, `env` to
        the caller's INHERITED variables. Raises SvmHostError when L1 itself
        dies or does not answer; it is then closed."""
        if not self.alive:
            raise SvmHostError("the SVM host is not running")
        if env is None:
            env = {name: os.environ[name] for name in INHERITED if name in os.environ}
        number, self._next = self._next, self._next + 1
        script = os.path.join(self.job_dir, f"{number}.sh")
        with open(script + ".tmp", "w") as out:
            out.write(command_script(argv, cwd or os.getcwd(), env, timeout))
        os.replace(script + ".tmp", script)
        started = time.monotonic()
        # The command's own `timeout` ends it; past that, L1 itself is stuck.
        status = self._wait_for(os.path.join(self.job_dir, f"{number}.status"),
                                started + timeout + 30, f"running {shlex.join(argv)}", number)
        seconds = time.monotonic() - started
        return CommandResult(int(status), self._read(f"{number}.out"), self._read(f"{number}.err"), seconds)

    def shell(self, script, **options):
        """Runs a /bin/sh script inside L1 (see run())."""
        return self.run(["/bin/sh", "-c", script], **options)

    def console(self):
        """L1's console so far (its kernel's warnings, e.g. soft lockups)."""
        return _read_text(self.console_path) if self._folder else self._saved[0]

    def _read(self, name):
        with open(os.path.join(self.job_dir, name), "rb") as file:
            return file.read().decode(errors="replace")

    def _wait_for(self, path, deadline, doing, number=None):
        while not os.path.exists(path):
            if self._qemu.poll() is not None:
                error = SvmHostError(f"the SVM host stopped (QEMU status {self._qemu.returncode}) while "
                                     f"{doing}: {self._qemu.stderr.read().decode(errors='replace').strip()}"
                                     f"{self._output_tail(number)}{self._console_tail()}")
                self.close()
                raise error
            if time.monotonic() > deadline:
                error = SvmHostError(f"the SVM host did not answer in time while {doing}"
                                     f"{self._output_tail(number)}{self._console_tail()}")
                self.close()
                raise error
            time.sleep(POLL_SECONDS)
        with open(path) as file:
            return file.read()

    def qemu_log(self):
        """QEMU's log so far (kept after close(), like console())."""
        return _read_text(self.qemu_log_path) if self._folder else self._saved[1]

    def _output_tail(self, number, characters=3000):
        """What the unfinished command `number` had written so far."""
        if number is None:
            return ""
        return "".join(f"\nits {name} so far:\n{_read_text(os.path.join(self.job_dir, f'{number}.{name}'))[-characters:]}"
                       for name in ("out", "err"))

    def _console_tail(self, lines=30):
        tail = self.console().replace("\r", "").splitlines()[-lines:]
        text = "\nL1 console:\n" + "\n".join(tail) if tail else ""
        log = self.qemu_log().splitlines()
        if log:
            text += "\nQEMU log (-d cpu_reset,guest_errors), first lines:\n" + "\n".join(log[:40])
        return text


class HostSlot:
    """At most one SvmHost at a time, started on first use and started again
    when the last one died; what a test session shares."""

    def __init__(self, cpus=1):
        self.cpus = cpus
        self.host = None

    def get(self):
        if self.host is None or not self.host.alive:
            self.release()
            self.host = SvmHost(cpus=self.cpus)
            self.host.start()
        return self.host

    def release(self):
        if self.host is not None:
            self.host.close()
            self.host = None


def command_script(argv, cwd, env, timeout):
    """The /bin/sh script that runs argv in `cwd` with exactly `env`, for at most `timeout` s."""
    assignments = " ".join(shlex.quote(f"{name}={value}") for name, value in sorted(env.items()))
    return (f"cd {shlex.quote(cwd)} || exit 126\n"
            f"exec env -i {assignments} timeout -k 10 {int(timeout)} {shlex.join(argv)}\n")


def _take_run_lock(path):
    """The machine's one-L1 lock, waited for (saying so) up to LOCK_TIMEOUT."""
    lock = open(path, "w")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return lock
    except BlockingIOError:
        pass
    print(f"pyvmm.testing.svm: another SVM host runs on this machine; waiting for it "
          f"(at most {LOCK_TIMEOUT} s)", file=sys.stderr, flush=True)
    deadline = time.monotonic() + LOCK_TIMEOUT
    while time.monotonic() < deadline:
        time.sleep(1)
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return lock
        except BlockingIOError:
            pass
    lock.close()
    raise SvmHostError(f"another SVM host held {path} for {LOCK_TIMEOUT} s")


def _die_with_parent():
    """In the QEMU child: SIGKILL when the process that started it dies, so a
    killed test run leaves no L1 behind (PR_SET_PDEATHSIG)."""
    import ctypes
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL, 0, 0, 0)


def _read_text(path):
    try:
        with open(path, "rb") as file:
            return file.read().decode(errors="replace")
    except OSError:
        return ""
