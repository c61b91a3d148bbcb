"""The `pyvmm` command.

Every failure a user can cause ends in one line `pyvmm: error: ...` and a
non-zero status; no traceback ever reaches the terminal.
"""

import argparse
import contextlib
import json
import os
import signal
import sys

from . import __version__, guests
from .arch.x86_64.cpuid import CpuFeatureError, parse_feature_mask
from .config import ConfigError, VmConfig, parse_address, parse_size
from .devices import BusError
from .kvm import KvmError
from .loader import LoaderError
from .memory import GuestMemoryError
from .machine import InputFileError, Machine, SnapshotError, read_kernel, read_snapshot
from .run import trace
from .run.stats import format_device_counters, format_post_codes
from .run.stop import STATUS_CRASH
from .sandbox import SandboxError
from .terminal import raw_input_mode
from .user_devices import parse_device_spec

EXIT_USAGE = 2
EXIT_HOST = 1
EXIT_INTERRUPTED = 130
EXIT_BROKEN_PIPE = 128 + signal.SIGPIPE     # what a shell shows for a tool SIGPIPE ended
# The serial console, early output from the first instruction on, and a
# panic ends the run (a reset) instead of hanging.
LINUX_CMDLINE = "console=ttyS0 earlyprintk=serial panic=-1"


class UsageError(Exception):
    pass


class Parser(argparse.ArgumentParser):
    def error(self, message):
        raise UsageError(message)

    def _print_message(self, message, file=None):
        # argparse ignores a failed write of --help or --version; a closed
        # pipe ends them as it ends every command (main()).
        if message:
            (file or sys.stderr).write(message)


def add_machine_arguments(parser):
    """Options every command that boots a VM takes."""
    parser.add_argument("--memory", metavar="SIZE",
                        help="guest RAM, with a K/M/G suffix (default 128M)")
    parser.add_argument("--cpus", type=int, metavar="N",
                        help="number of vCPUs (default 1)")
    parser.add_argument("--serial", default="stdio", metavar="stdio|null|file:PATH|pty|socket=PATH",
                        help="the serial console: output to stdout (stdio, the default), nowhere "
                             "(null) or a file, input from stdin; or a pseudo-terminal (pty, its "
                             "path is printed) or a unix socket to attach to (socket=PATH), "
                             "which carry both")
    parser.add_argument("--timeout", type=float, metavar="SECONDS",
                        help="stop the guest after this long (exit status 124)")
    parser.add_argument("--cpu-features", default="", metavar="-FEAT[,-FEAT...]",
                        help="hide CPU features from the guest, e.g. -xsave,-cx16 "
                             "(features that depend on them are hidden too)")
    parser.add_argument("--stats", nargs="?", const="text", choices=("text", "json"), metavar="text|json",
                        help="print exit counters to stderr at the end (--stats=json for machines)")
    parser.add_argument("--exit-path", choices=("fast", "python"), metavar="fast|python",
                        help="run loop: the C loop, which handles the registers devices declare "
                             "(posted writes, cached reads) without Python (fast, the default), or "
                             "the Python reference loop, one trip through Python per exit (python); "
                             "PYVMM_EXIT_PATH sets the default")
    parser.add_argument("--trace", metavar="FILE",
                        help="write one JSON line per VM exit (read it with `pyvmm stats FILE`)")
    parser.add_argument("--device", action="append", default=[], metavar="MODULE:CLASS@RANGE",
                        help="a Python device: PKG.MODULE:CLASS@PORT[-PORT] or "
                             "...@mmio:ADDR[-ADDR], then ,KEY=VALUE options (repeatable)")
    parser.add_argument("--console", choices=("off", "virtio"), default="off", metavar="off|virtio",
                        help="virtio: a virtio console (hvc0) on the serial output, taking the input")
    parser.add_argument("--rng", nargs="?", const="", metavar="src=PATH",
                        help="a virtio entropy device reading PATH (default /dev/urandom)")
    parser.add_argument("--disk", action="append", default=[],
                        metavar="path=FILE[,readonly=on][,id=NAME][,rate_limit_bw=BYTES/s][,rate_limit_ops=OPS/s]"
                                "[,burst=TIME]",
                        help="a virtio-blk disk on a raw image (repeatable)")
    parser.add_argument("--net", action="append", default=[],
                        metavar="[tap=NAME][,mac=MAC][,id=NAME][,[rx_|tx_]rate_limit_bw=BYTES/s]"
                                "[,[rx_|tx_]rate_limit_ops=OPS/s][,burst=TIME]",
                        help="a virtio-net device on an existing TAP device, or on one made for the run "
                             "without tap= (repeatable)")
    parser.add_argument("--seccomp", choices=("on", "log", "off"), default="on", metavar="on|log|off",
                        help="confine each thread to the system calls of its role: a call outside "
                             "it ends the run (on, the default), is reported on stderr (log), "
                             "or nothing is confined (off)")


def build_parser():
    parser = Parser(prog="pyvmm", description="A small virtual machine monitor on Linux KVM.")
    parser.add_argument("--version", action="version", version=f"pyvmm {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.required = True
    run = commands.add_parser("run", help="boot a kernel (default: the bundled hello guest)")
    what = run.add_mutually_exclusive_group()
    what.add_argument("kernel", nargs="?", metavar="KERNEL",
                      help="kernel image: bzImage, multiboot, PVH or plain ELF, "
                           "or a flat binary with --raw-mode")
    what.add_argument("--guest", metavar="NAME",
                      help="boot a bundled guest instead of KERNEL (`pyvmm guests` lists them)")
    add_machine_arguments(run)
    run.add_argument("--cmdline", default="", metavar="STR", help="kernel command line")
    run.add_argument("--module", action="append", default=[], metavar="'PATH [ARGS]'",
                     help="a multiboot/PVH module with its command line (repeatable, in order)")
    run.add_argument("--initrd", metavar="PATH", help="initial ramdisk for a Linux kernel")
    run.add_argument("--raw-mode", choices=("real", "protected", "long"), metavar="real|protected|long",
                     help="load KERNEL as a flat binary entered in this mode")
    run.add_argument("--load-addr", metavar="ADDR",
                     help="flat binary load address (default 0x7c00 real, 0x100000 otherwise)")
    run.add_argument("--entry", metavar="ADDR", help="flat binary entry point (default: load address)")
    run.add_argument("--gdb", metavar="HOST:PORT",
                     help="stop before the first instruction and wait for gdb "
                          "(target remote HOST:PORT); port 0 picks a free port")
    run.add_argument("--restore", metavar="DIR",
                     help="continue the VM a snapshot in DIR holds (written by `pyvmm remote snapshot`); "
                          "the machine comes from the snapshot, so KERNEL and the options that shape "
                          "the machine are refused")
    run.add_argument("--paused", action="store_true",
                     help="start with every vCPU paused, until `pyvmm remote resume` (needs --api-socket)")
    run.add_argument("--api-socket", metavar="PATH",
                     help="serve the HTTP API (JSON, see `pyvmm remote`) on a unix socket at PATH, "
                          "mode 0600; PATH must not exist, or be a stale socket")

    fuzz = commands.add_parser("fuzz", help="a long fuzzing campaign of the fuzz targets under HypoFuzz "
                                            "(the optional extra pyvmm[fuzz])")
    fuzz.add_argument("targets", nargs="*", metavar="TARGET",
                      help="test files or directories to fuzz (default: tests/fuzz of the source checkout)")
    fuzz.add_argument("--seconds", type=float, metavar="N",
                      help="stop after N seconds, then replay what was found (default: until Ctrl-C)")
    fuzz.add_argument("--processes", type=int, default=1, metavar="N", help="fuzzing processes (default 1)")
    fuzz.add_argument("--database", metavar="DIR",
                      help="hypothesis's example database, shared by every process and machine that "
                           "names it (default: the repository's .hypothesis/examples)")
    fuzz.add_argument("--dashboard", action="store_true", help="serve HypoFuzz's dashboard")

    remote = commands.add_parser("remote", help="control a VM through its --api-socket")
    remote.add_argument("--api-socket", metavar="PATH", required=True, help="the VM's API socket")
    from .api.client import add_commands
    add_commands(remote)

    listing = commands.add_parser("guests", help="list the bundled guests, one line each on what they show")
    listing.add_argument("--path", metavar="NAME", help="print the file of guest NAME (for gdb, objdump)")

    stats = commands.add_parser("stats", help="summarise a --trace file (like perf kvm stat)")
    stats.add_argument("trace", metavar="FILE")
    stats.add_argument("--json", action="store_true", help="machine-readable output")

    linux = commands.add_parser("linux", help="a stock Debian kernel with a busybox initramfs")
    linux_commands = linux.add_subparsers(dest="linux_command", metavar="ACTION")
    linux_commands.required = True
    for name, text in (("fetch", "download and cache the kernel and build the initramfs"),
                       ("run", "fetch if needed, then boot it on the serial console")):
        action = linux_commands.add_parser(name, help=text)
        action.add_argument("--cache-dir", metavar="DIR", help="where the assets are cached")
        action.add_argument("--refresh", action="store_true", help="download again")
        if name == "run":
            add_machine_arguments(action)
            action.add_argument("--cmdline", default="", metavar="STR",
                                help=f"appended to the kernel command line ({LINUX_CMDLINE!r})")
    return parser


def config_from_args(args):
    kernel, raw_mode = getattr(args, "kernel", None), getattr(args, "raw_mode", None)
    if getattr(args, "guest", None) is not None:
        guest = _find_guest(args.guest)
        kernel, raw_mode = _guest_file(guest), raw_mode or guest.raw_mode
    config = VmConfig(
        kernel=kernel,
        memory=parse_size("128M" if args.memory is None else args.memory),
        cpus=1 if args.cpus is None else args.cpus,
        cmdline=args.cmdline,
        modules=getattr(args, "module", []),
        initrd=getattr(args, "initrd", None),
        raw_mode=raw_mode,
        load_addr=_address(getattr(args, "load_addr", None)),
        entry=_address(getattr(args, "entry", None)),
        serial=args.serial,
        timeout=args.timeout,
        stats=args.stats,
        trace=args.trace,
        exit_path=args.exit_path,
        gdb=getattr(args, "gdb", None),
        masked_features=parse_feature_mask(args.cpu_features),
        seccomp=args.seccomp,
        **virtio_options(args),
    )
    if (config.load_addr is not None or config.entry is not None) and not config.raw_mode:
        raise ConfigError("--load-addr and --entry need --raw-mode")
    config.validate()
    if config.has_virtio:     # before the kernel is read: a bad, locked or missing image
        from .virtio_options import check
        check(config)
    return config


def virtio_options(args):
    """VmConfig's console, rng, disks and nets from --console, --rng, --disk and --net."""
    if args.console == "off" and args.rng is None and not args.disk and not args.net:
        return {}
    from .virtio_options import parse_disk, parse_net, parse_rng
    return {"console": args.console, "rng": None if args.rng is None else parse_rng(args.rng),
            "disks": [parse_disk(text) for text in args.disk], "nets": [parse_net(text) for text in args.net]}


def _address(text):
    return None if text is None else parse_address(text)


def _find_guest(name):
    try:
        return guests.find(name)
    except guests.GuestNotFound as error:
        raise ConfigError(f"--guest: {error}") from None


def _guest_file(guest):
    try:
        return guests.path(guest.file)
    except guests.GuestNotFound as error:     # a checkout that cannot build them (no gcc, make)
        raise HostProblem(str(error)) from None


def command_guests(args):
    if args.path is not None:
        print(_guest_file(_find_guest(args.path)))
        return 0
    try:
        catalogue = guests.catalogue()
    except guests.GuestNotFound as error:     # an installation without guests/README.md
        raise HostProblem(str(error)) from None
    width = max(len(guest.name) for guest in catalogue)
    for guest in catalogue:
        print(f"{guest.name:<{width}}  {guest.shows.replace('`', '')}")
    return 0


class HostProblem(Exception):
    """The host cannot do what was asked (no /dev/kvm, no network for a fetch)."""


def command_linux(args):
    from .linux import AssetError, fetch   # only this command needs apt and friends
    try:
        assets = fetch(cache_dir=args.cache_dir, refresh=args.refresh)
    except AssetError as error:
        raise HostProblem(str(error)) from None
    if args.linux_command == "fetch":
        print(f"kernel:    {assets.kernel}\ninitramfs: {assets.initramfs}\nversion:   {assets.version}")
        return 0
    config = config_from_args(args)
    config.kernel, config.initrd = assets.kernel, assets.initramfs
    config.cmdline = f"{LINUX_CMDLINE} {config.cmdline}".strip()
    return boot(config, [(text, parse_device_spec(text)) for text in args.device],
                confine_caller=args.confine_caller)


def command_run(args):
    if args.paused and args.api_socket is None:
        raise ConfigError("--paused needs --api-socket: nothing else could resume the VM")
    if args.restore is not None:
        given = [flag for name, flag in MACHINE_OPTIONS if getattr(args, name, None) not in (None, "", [], False)]
        if getattr(args, "console", "off") != "off":
            given.append("--console")
        if getattr(args, "rng", None) is not None:       # a bare --rng is ""
            given.append("--rng")
        if given:
            raise ConfigError(f"--restore takes the machine from the snapshot: {', '.join(given)} cannot be given")
        snapshot = read_snapshot(args.restore)
        with _api_server(args) as api:
            return boot_restored(args, snapshot, api)
    config = config_from_args(args)
    devices = [(text, parse_device_spec(text)) for text in args.device]
    with _api_server(args) as api:
        return boot(config, devices, api=api, paused=args.paused, confine_caller=args.confine_caller)


@contextlib.contextmanager
def _api_server(args):
    """The API server --api-socket asks for (its socket made now, before the
    VM), or None; closed (its socket removed) when the run ends."""
    if args.api_socket is None:
        yield None
        return
    from .api import ApiServer, ApiSocketError
    try:
        server = ApiServer(args.api_socket)
    except ApiSocketError as error:
        raise ConfigError(str(error)) from None
    try:
        yield server
    finally:
        server.close()


def command_fuzz(args):
    from .testing.campaign import CampaignError, run
    if args.processes < 1 or (args.seconds is not None and not args.seconds > 0):
        raise ConfigError("--processes and --seconds must be positive")
    try:
        return run(args.targets, args.seconds, args.processes, args.database, args.dashboard)
    except CampaignError as error:
        raise ConfigError(str(error)) from None


def command_remote(args):
    from .api.client import RemoteError, UsageError as RemoteUsage, run
    try:
        return run(args)
    except RemoteUsage as error:
        raise ConfigError(str(error)) from None
    except RemoteError as error:
        raise HostProblem(str(error)) from None


# Options that shape the machine: a snapshot brings its own.
MACHINE_OPTIONS = (("kernel", "KERNEL"), ("memory", "--memory"), ("cpus", "--cpus"), ("cmdline", "--cmdline"),
                   ("module", "--module"), ("initrd", "--initrd"), ("raw_mode", "--raw-mode"),
                   ("load_addr", "--load-addr"), ("entry", "--entry"), ("cpu_features", "--cpu-features"),
                   ("device", "--device"), ("gdb", "--gdb"), ("disk", "--disk"), ("net", "--net"))


def boot_restored(args, snapshot, api=None):
    """`pyvmm run --restore DIR`: the machine a snapshot holds, run on."""
    overrides = {"serial": args.serial, "timeout": args.timeout, "stats": args.stats, "trace": args.trace}
    if args.exit_path is not None:
        overrides["exit_path"] = args.exit_path

    def make_device(text):
        spec = parse_device_spec(text)
        return spec.bus, spec.base, spec.length, spec.create(), f"{spec.module}:{spec.cls}"

    previous = {signo: signal.signal(signo, _terminate) for signo in (signal.SIGTERM, signal.SIGHUP)}
    try:
        try:
            machine = Machine.restore(snapshot, make_device=make_device, **overrides)
        except BusError as error:
            raise ConfigError(f"a device of the snapshot: {error}") from None
        return _run(machine, machine.config, api, args.paused, args.confine_caller)
    finally:
        for signo, handler in previous.items():
            signal.signal(signo, handler)


def command_stats(args):
    try:
        summary = trace.summarize(trace.read_trace(args.trace))
    except OSError as error:
        raise ConfigError(f"cannot read trace {args.trace}: {error.strerror or error}") from None
    except ValueError as error:
        raise ConfigError(str(error)) from None
    print(json.dumps(summary, indent=1) if args.json else trace.format_summary(summary))
    return 0


class Terminated(Exception):
    """SIGTERM or SIGHUP: unwind (restoring the terminal, closing the VM) and exit."""


def _terminate(signo, _frame):
    raise Terminated(signo)


def boot(config, devices=(), api=None, paused=False, confine_caller=False):
    """Runs one VM to its end; the exit status. SIGTERM and SIGHUP unwind it
    (their handlers are restored afterwards). `confine_caller`: see main()."""
    previous = {signo: signal.signal(signo, _terminate) for signo in (signal.SIGTERM, signal.SIGHUP)}
    try:
        return _boot(config, devices, api, paused, confine_caller)
    finally:
        for signo, handler in previous.items():
            signal.signal(signo, handler)


def _boot(config, devices, api=None, paused=False, confine_caller=False):
    image, options = read_kernel(config)
    user_devices = [(text, spec, spec.create()) for text, spec in devices]
    machine = Machine(config, image, options)
    try:
        for text, spec, device in user_devices:
            register = machine.add_mmio_device if spec.bus == "mmio" else machine.add_port_device
            try:
                register(spec.base, spec.length, device, name=f"{spec.module}:{spec.cls}")
            except BusError as error:
                raise ConfigError(f"--device: {error}") from None
            machine.device_specs.append(text)
    except BaseException:
        machine.close()
        raise
    return _run(machine, config, api, paused, confine_caller)


def _run(machine, config, api=None, paused=False, confine_caller=False):
    """Runs a machine the command line made (serving its API if asked); its
    exit status. `confine_caller`: see main()."""
    with machine:
        if machine.console_where is not None:
            print(f"pyvmm: serial console on {machine.console_where}", file=sys.stderr, flush=True)
        if machine.gdb is not None:
            print(f"warning: waiting for gdb on {machine.gdb.endpoint}", file=sys.stderr, flush=True)
        for net_id, tap, created in machine.taps:
            if created:
                print(f"pyvmm: {net_id} on TAP device {tap}, made for this run (gone when it ends)",
                      file=sys.stderr, flush=True)
        if api is not None:
            api.start(machine)
        # Input comes from stdin whatever the output is, unless the console brings its own.
        from_stdin = not machine.console_carries_input and _readable(0)
        with raw_input_mode(0) if from_stdin else contextlib.nullcontext():
            result = machine.run(stdin_fd=0 if from_stdin else None, paused=paused,
                                 confine_caller=confine_caller,
                                 caller_removes=() if api is None else (api.directory,))
        if api is not None:
            api.close()                     # before the machine goes: no request may reach a closed one
        if config.stats == "json":
            print(json.dumps({**machine.stats.as_dict(result), "devices": machine.device_counters()}),
                  file=sys.stderr)
        elif config.stats:
            print(machine.stats.format(machine.port_name, result), file=sys.stderr)
            devices = format_device_counters(machine.device_counters())
            if devices:
                print(devices, file=sys.stderr)
            history, total = machine.post_codes()
            report = format_post_codes(history, machine.started_ns, total)
            if report:
                print(report, file=sys.stderr)
    for failure in machine.late_device_failures:
        print(f"pyvmm: warning: after the run ended, device failure: {failure}", file=sys.stderr)
    if machine.console_dropped:
        print(f"pyvmm: warning: {machine.console_dropped} bytes of console output were dropped: "
              f"{machine.console_drop_reason}", file=sys.stderr)
    if result.reason != "seccomp" and machine.sandbox.refusal is not None:
        # Refused while the VM was closed (on the confined main thread): what
        # that call was for (a disk's sync...) did not happen.
        _error(f"{machine.sandbox.refusal}, after the run ended")
        return STATUS_CRASH
    if result.reason == "seccomp":
        _error(result.message)
    elif result.reason == "device-failure":
        print(f"pyvmm: device failure: {result.message}", file=sys.stderr)
    elif result.status == STATUS_CRASH:
        print(f"pyvmm: guest crashed: {result.message}", file=sys.stderr)
    elif result.reason == "timeout":
        print(f"pyvmm: {result.message}", file=sys.stderr)
    return result.status & 0xFF


def _readable(fd):
    try:
        os.fstat(fd)
    except OSError:
        return False
    return True


COMMANDS = {"guests": command_guests, "linux": command_linux, "stats": command_stats, "run": command_run,
            "remote": command_remote, "fuzz": command_fuzz}


def main(argv=None, confine_caller=False):
    """The exit status of one command. A reader that closes its end of
    standard output (`pyvmm stats FILE | head -1`) ends the command quietly,
    with the status a shell shows for a tool that SIGPIPE ended. With
    `confine_caller` the calling thread confines itself as the supervisor
    once a VM's threads have started, for the rest of its life
    (pyvmm.sandbox): what the pyvmm program does (command()); a Python
    program calling main() keeps its thread."""
    try:
        try:
            return _main(argv, confine_caller)
        finally:
            sys.stdout.flush()          # inside: a late broken pipe is caught here too
    except BrokenPipeError:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())   # nothing more to write at exit
        os.close(devnull)
        return EXIT_BROKEN_PIPE


def _main(argv, confine_caller):
    try:
        args = build_parser().parse_args(argv)
        args.confine_caller = confine_caller
        return COMMANDS[args.command](args)
    except (UsageError, ConfigError, CpuFeatureError, LoaderError, GuestMemoryError,
            InputFileError, SnapshotError) as error:
        _error(error)
        return EXIT_USAGE
    except (KvmError, HostProblem, SandboxError) as error:
        _error(error)
        return EXIT_HOST
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except Terminated as signo:
        return 128 + signo.args[0]
    except BrokenPipeError:
        raise
    except Exception as error:  # never a traceback: name the bug in one line
        _error(f"internal error: {type(error).__name__}: {error}")
        return STATUS_CRASH


def _error(message):
    print(f"pyvmm: error: {message}", file=sys.stderr)


def command():
    """The pyvmm program (and `python -m pyvmm`): its process ends with the
    run, so its main thread is confined too, and it ends without the
    interpreter's teardown: by then the VM is closed and every file pyvmm
    wrote is closed, and finalising every module and object would add tens
    of milliseconds to each run (a third of a `pyvmm run` of a tiny guest)."""
    status = main(confine_caller=True)
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):       # a closed or broken stream: nothing more to say
            pass
    os._exit(status)


if __name__ == "__main__":
    sys.exit(command())
