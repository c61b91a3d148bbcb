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

from .arch.x86_64.cpuid import CpuFeatureError, parse_feature_mask
from .config import ConfigError, VmConfig, parse_address, parse_size
from .devices import BusError
from .kvm import KvmError
from .loader import LoaderError
from .memory import GuestMemoryError
from .machine import InputFileError, Machine, read_kernel
from .run import trace
from .run.stats import format_post_codes
from .run.stop import STATUS_CRASH
from .terminal import raw_input_mode
from .user_devices import parse_device_spec

EXIT_USAGE = 2
EXIT_HOST = 1
EXIT_INTERRUPTED = 130
# The serial console, early output from the first instruction on, and a
# panic ends the run (a reset) instead of hanging.
LINUX_CMDLINE = "console=ttyS0 earlyprintk=serial panic=-1"


class UsageError(Exception):
    pass


class Parser(argparse.ArgumentParser):
    def error(self, message):
        raise UsageError(message)


def add_machine_arguments(parser):
    """Options every command that boots a VM takes."""
    parser.add_argument("--memory", default="128M", metavar="SIZE",
                        help="guest RAM, with a K/M/G suffix (default 128M)")
    parser.add_argument("--cpus", type=int, default=1, metavar="N",
                        help="number of vCPUs (default 1)")
    parser.add_argument("--serial", default="stdio", metavar="stdio|null|file:PATH",
                        help="where the serial console's output goes (default stdio)")
    parser.add_argument("--timeout", type=float, metavar="SECONDS",
                        help="stop the guest after this long (exit status 124)")
    parser.add_argument("--cpu-features", default="", metavar="-FEAT[,-FEAT...]",
                        help="hide CPU features from the guest, e.g. -xsave,-cx16 "
                             "(features that depend on them are hidden too)")
    parser.add_argument("--stats", nargs="?", const="text", choices=("text", "json"),
                        help="print exit counters to stderr at the end (--stats=json for machines)")
    parser.add_argument("--exit-path", choices=("python", "fast"),
                        help="run loop: the C loop, which handles the registers devices declare "
                             "(posted writes, cached reads) without Python (fast, the default), or "
                             "the Python reference loop, one trip through Python per exit (python); "
                             "PYVMM_EXIT_PATH sets the default")
    parser.add_argument("--trace", metavar="FILE",
                        help="write one JSON line per VM exit (read it with `pyvmm stats FILE`)")
    parser.add_argument("--device", action="append", default=[], metavar="MODULE:CLASS@RANGE",
                        help="a Python device: PKG.MODULE:CLASS@PORT[-PORT] or "
                             "...@mmio:ADDR[-ADDR], then ,KEY=VALUE options (repeatable)")
    parser.add_argument("--console", choices=("off", "virtio"), default="off",
                        help="virtio: a virtio console (hvc0) on the serial output, taking the input")
    parser.add_argument("--rng", nargs="?", const="", metavar="src=PATH",
                        help="a virtio entropy device reading PATH (default /dev/urandom)")
    parser.add_argument("--disk", action="append", default=[], metavar="path=FILE[,readonly=on][,id=NAME]",
                        help="a virtio-blk disk on a raw image (repeatable)")


def build_parser():
    parser = Parser(prog="pyvmm", description="A small virtual machine monitor on Linux KVM.")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.required = True
    run = commands.add_parser("run", help="boot a kernel (default: the bundled hello guest)")
    run.add_argument("kernel", nargs="?", metavar="KERNEL",
                     help="kernel image: bzImage, multiboot, PVH or plain ELF, "
                          "or a flat binary with --raw-mode")
    add_machine_arguments(run)
    run.add_argument("--cmdline", default="", metavar="STR", help="kernel command line")
    run.add_argument("--module", action="append", default=[], metavar="'PATH[ ARGS]'",
                     help="a multiboot/PVH module with its command line (repeatable, in order)")
    run.add_argument("--initrd", metavar="PATH", help="initial ramdisk for a Linux kernel")
    run.add_argument("--raw-mode", choices=("real", "protected", "long"),
                     help="load KERNEL as a flat binary entered in this mode")
    run.add_argument("--load-addr", metavar="ADDR",
                     help="flat binary load address (default 0x7c00 real, 0x100000 otherwise)")
    run.add_argument("--entry", metavar="ADDR", help="flat binary entry point (default: load address)")
    run.add_argument("--gdb", metavar="HOST:PORT",
                     help="stop before the first instruction and wait for gdb "
                          "(target remote HOST:PORT); port 0 picks a free port")

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
    config = VmConfig(
        kernel=getattr(args, "kernel", None),
        memory=parse_size(args.memory),
        cpus=args.cpus,
        cmdline=args.cmdline,
        modules=getattr(args, "module", []),
        initrd=getattr(args, "initrd", None),
        raw_mode=getattr(args, "raw_mode", None),
        load_addr=_address(getattr(args, "load_addr", None)),
        entry=_address(getattr(args, "entry", None)),
        serial=args.serial,
        timeout=args.timeout,
        stats=args.stats,
        trace=args.trace,
        exit_path=args.exit_path,
        gdb=getattr(args, "gdb", None),
        masked_features=parse_feature_mask(args.cpu_features),
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
    """VmConfig's console, rng and disks from --console, --rng and --disk."""
    if args.console == "off" and args.rng is None and not args.disk:
        return {}
    from .virtio_options import parse_disk, parse_rng
    return {"console": args.console, "rng": None if args.rng is None else parse_rng(args.rng),
            "disks": [parse_disk(text) for text in args.disk]}


def _address(text):
    return None if text is None else parse_address(text)


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
    return boot(config, [parse_device_spec(spec) for spec in args.device])


def command_run(args):
    return boot(config_from_args(args), [parse_device_spec(spec) for spec in args.device])


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


def boot(config, devices=()):
    """Runs one VM to its end; the exit status. SIGTERM and SIGHUP unwind it
    (their handlers are restored afterwards)."""
    previous = {signo: signal.signal(signo, _terminate) for signo in (signal.SIGTERM, signal.SIGHUP)}
    try:
        return _boot(config, devices)
    finally:
        for signo, handler in previous.items():
            signal.signal(signo, handler)


def _boot(config, devices):
    image, options = read_kernel(config)
    user_devices = [(spec, spec.create()) for spec in devices]
    with Machine(config, image, options) as machine:
        for spec, device in user_devices:
            register = machine.add_mmio_device if spec.bus == "mmio" else machine.add_port_device
            try:
                register(spec.base, spec.length, device, name=f"{spec.module}:{spec.cls}")
            except BusError as error:
                raise ConfigError(f"--device: {error}") from None
        if machine.gdb is not None:
            print(f"warning: waiting for gdb on {machine.gdb.endpoint}", file=sys.stderr, flush=True)
        interactive = config.serial == "stdio" and _readable(0)
        with raw_input_mode(0) if interactive else contextlib.nullcontext():
            result = machine.run(stdin_fd=0 if interactive else None)
        if config.stats == "json":
            print(json.dumps(machine.stats.as_dict(result)), file=sys.stderr)
        elif config.stats:
            print(machine.stats.format(machine.port_name, result), file=sys.stderr)
            history, total = machine.post_codes()
            report = format_post_codes(history, machine.started_ns, total)
            if report:
                print(report, file=sys.stderr)
    for failure in machine.late_device_failures:
        print(f"pyvmm: warning: after the run ended, device failure: {failure}", file=sys.stderr)
    if machine.console_dropped:
        print(f"pyvmm: warning: {machine.console_dropped} bytes of console output were dropped: "
              "the output did not take them in time", file=sys.stderr)
    if result.reason == "device-failure":
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


def main(argv=None):
    try:
        args = build_parser().parse_args(argv)
        return {"linux": command_linux, "stats": command_stats, "run": command_run}[args.command](args)
    except (UsageError, ConfigError, CpuFeatureError, LoaderError, GuestMemoryError,
            InputFileError) as error:
        _error(error)
        return EXIT_USAGE
    except (KvmError, HostProblem) as error:
        _error(error)
        return EXIT_HOST
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except Terminated as signo:
        return 128 + signo.args[0]
    except Exception as error:  # never a traceback: name the bug in one line
        _error(f"internal error: {type(error).__name__}: {error}")
        return STATUS_CRASH


def _error(message):
    print(f"pyvmm: error: {message}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
