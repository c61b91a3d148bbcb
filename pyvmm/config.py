"""The VM configuration the command line (or Python code) fills in."""

import os
import re

from .arch.x86_64 import layout

DEFAULT_MEMORY = 128 << 20
MAX_CPUS = 254             # the IOAPIC needs the last 8-bit APIC ID (MP table, MADT)
_SIZE = re.compile(r"^\s*(\d+)\s*([KMGT]?)i?B?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
SECCOMP_MODES = ("on", "log", "off")


def default_seccomp():
    """VmConfig.seccomp's default: on, unless PYVMM_SECCOMP says otherwise."""
    return os.environ.get("PYVMM_SECCOMP", "on")


class ConfigError(ValueError):
    """A configuration value that cannot work; the message is for the user."""


def parse_size(text):
    """'512M' -> 536870912. Plain numbers are bytes; K/M/G/T are binary units."""
    match = _SIZE.match(str(text))
    if not match:
        raise ConfigError(f"invalid size {text!r} (examples: 512M, 2G, 65536K)")
    return int(match.group(1)) * _UNITS[match.group(2).upper()]


def parse_address(text):
    """'0x100000' or '1048576' -> int."""
    try:
        value = int(str(text), 0)
    except ValueError:
        raise ConfigError(f"invalid address {text!r}") from None
    if value < 0:
        raise ConfigError(f"invalid address {text!r}")
    return value


def parse_endpoint(text):
    """'HOST:PORT' (or '[IPV6]:PORT') -> (host, port); port 0 picks a free one."""
    host, found, port = str(text).rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not found or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError(f"invalid gdb address {text!r} (use HOST:PORT, e.g. 127.0.0.1:1234)")
    return host, int(port)


def host_memory():
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


class VmConfig:
    """What a VM is made of. Plain attributes; validate() checks them together.

    kernel: path (None boots the bundled hello guest); memory: bytes;
    raw_mode: real | protected | long to load a flat binary, with load_addr
    and entry; serial: stdio | null | file:PATH | pty | socket=PATH | buffer;
    timeout: seconds; console, rng, disks, nets: virtio devices
    (pyvmm.virtio_options), opened by the Machine before anything else;
    seccomp: on | log | off, the sandbox of pyvmm's threads (pyvmm.sandbox).
    """

    def __init__(self, kernel=None, memory=DEFAULT_MEMORY, cpus=1, cmdline="", raw_mode=None,
                 load_addr=None, entry=None, serial="stdio", timeout=None, stats=False,
                 masked_features=(), modules=(), initrd=None, trace=None, exit_path=None, gdb=None,
                 console="off", rng=None, disks=(), nets=(), seccomp=None):
        self.kernel = kernel
        self.memory = memory
        self.cpus = cpus
        self.cmdline = cmdline
        self.raw_mode = raw_mode
        self.load_addr = load_addr
        self.entry = entry
        self.serial = serial
        self.timeout = timeout
        self.stats = stats
        self.masked_features = set(masked_features)   # CPUID features hidden from the guest
        self.modules = list(modules)                   # "PATH[ ARGS]" strings, in order
        self.initrd = initrd                           # path
        self.trace = trace                             # path of the JSON-lines exit trace
        # fast (the C loop) | python (the reference loop); PYVMM_EXIT_PATH sets the default
        self.exit_path = exit_path or os.environ.get("PYVMM_EXIT_PATH") or "fast"
        self.gdb = gdb                                 # "HOST:PORT": wait for gdb there
        self.console = console                         # off | virtio (pyvmm.virtio_options)
        self.rng = rng                                 # RngSpec or None
        self.disks = list(disks)                       # DiskSpec, in slot order
        self.nets = list(nets)                         # NetSpec, in slot order after the disks
        self.seccomp = default_seccomp() if seccomp is None else seccomp

    @property
    def has_virtio(self):
        return self.console != "off" or self.rng is not None or bool(self.disks) or bool(self.nets)

    def __repr__(self):
        return f"VmConfig({', '.join(f'{k}={v!r}' for k, v in vars(self).items())})"

    def validate(self):
        """Raises ConfigError for values no VM can run with."""
        if self.memory < layout.MIN_MEMORY:
            raise ConfigError(f"memory size {self.memory} is too small (at least 1M)")
        if self.memory % 4096:
            raise ConfigError("memory size must be a multiple of 4K")
        if self.memory > host_memory():
            raise ConfigError(f"memory size {self.memory >> 20}M is more than this host has "
                              f"({host_memory() >> 20}M)")
        if not 1 <= self.cpus <= MAX_CPUS:
            raise ConfigError(f"--cpus must be between 1 and {MAX_CPUS}")
        if self.exit_path not in ("python", "fast"):
            raise ConfigError(f"unknown exit path {self.exit_path!r} (use python or fast)")
        if self.timeout is not None and not self.timeout > 0:
            raise ConfigError("--timeout must be a positive number of seconds")
        if self.raw_mode not in (None, "real", "protected", "long"):
            raise ConfigError(f"unknown raw mode {self.raw_mode!r}")
        if self.serial not in ("stdio", "null", "buffer", "pty") and not (
                self.serial.startswith("file:") and len(self.serial) > 5) and not (
                self.serial.startswith("socket=") and len(self.serial) > 7):
            raise ConfigError(f"unknown serial output {self.serial!r} "
                              "(use stdio, null, file:PATH, pty or socket=PATH)")
        if self.gdb is not None:
            parse_endpoint(self.gdb)
        if isinstance(self.cmdline, str):
            try:   # as the loaders and fw_cfg encode it: argv's undecodable bytes pass through
                self.cmdline.encode("utf-8", "surrogateescape")
            except UnicodeEncodeError:
                raise ConfigError(f"the command line {self.cmdline!r} cannot be encoded") from None
        if self.seccomp not in SECCOMP_MODES:
            raise ConfigError(f"unknown seccomp mode {self.seccomp!r} (use on, log or off)")
        return self
