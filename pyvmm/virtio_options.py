"""The virtio options of `pyvmm run`, in Cloud Hypervisor's syntax.

    --console virtio                            a virtio console (hvc0) on the serial output
    --rng [src=PATH]                            entropy from PATH (default /dev/urandom)
    --disk path=FILE[,readonly=on][,id=NAME][,rate_limit_bw=BYTES/s][,rate_limit_ops=OPS/s][,burst=TIME]
                                                a virtio-blk disk on a raw image (repeatable)
    --net [tap=NAME][,mac=MAC][,id=NAME][,rate limits]
                                                a virtio-net device on a TAP device (repeatable)

Values are KEY=VALUE pairs separated by commas; booleans take on/off (or
true/false). Rates take the size units of --memory (10M is 10 MiB a
second) and may end in /s; burst is how much a bucket holds, as time at its
rate (100ms by default; see pyvmm.devices.ratelimit). On --net,
rate_limit_bw and rate_limit_ops limit each direction, and the rx_ and tx_
forms of them one direction. `check` refuses what cannot work before the VM
is built: an unknown key, a missing or unreadable file, an image another VM
holds, an id too long for the 20-byte virtio-blk serial or used twice, a
TAP device that does not exist, a TAP to create without CAP_NET_ADMIN, more
devices than slots with an interrupt. The machine opens the files and TAP
devices for good (pyvmm.machine.virtio), before anything else of the VM
exists.
"""

from __future__ import annotations

import os
import re
import secrets
from typing import Dict, Iterable, Optional

from .arch.x86_64 import layout
from .config import ConfigError, parse_size
from .devices.ratelimit import RateLimiter
from .devices.virtio.blk import disk_ids
from .devices.virtio.image import ImageError, check_image
from .devices.virtio.net import format_mac, net_ids, parse_mac
from .devices.virtio.rng import DEFAULT_SOURCE
from .devices.virtio.tap import TapError, check_name, has_net_admin, interface_exists

CONSOLES = ("off", "virtio")
ID_BYTES = 20
MAX_DEVICES = layout.VIRTIO_MMIO_SLOTS - layout.VIRTIO_FIRST_IRQ_SLOT
_BOOLEANS = {"on": True, "true": True, "off": False, "false": False}


class RngSpec:
    def __init__(self, src: str = DEFAULT_SOURCE) -> None:
        self.src = src

    def __repr__(self) -> str:
        return f"RngSpec(src={self.src!r})"


DEFAULT_BURST = 0.1          # seconds of tokens a rate limiter's bucket holds
_DURATION = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*(ms|s)\s*$")


class RateLimitSpec:
    """A rate limiter's configuration: bytes and operations a second (None:
    no limit on that) and the buckets' burst, in seconds."""

    def __init__(self, bandwidth: Optional[int] = None, ops: Optional[int] = None,
                 burst: float = DEFAULT_BURST) -> None:
        self.bandwidth, self.ops, self.burst = bandwidth, ops, burst

    def limiter(self, clock=None) -> Optional[RateLimiter]:
        extra = {} if clock is None else {"clock": clock}
        return RateLimiter.from_rates(self.bandwidth, self.ops, self.burst, **extra)

    def to_plain(self) -> dict:
        return {"bandwidth": self.bandwidth, "ops": self.ops, "burst": self.burst}

    @classmethod
    def from_plain(cls, plain, where: str) -> Optional["RateLimitSpec"]:
        """to_plain()'s dict back (None: no limit); ConfigError for anything else."""
        if plain is None:
            return None
        if not isinstance(plain, dict) or set(plain) != {"bandwidth", "ops", "burst"}:
            raise ConfigError(f"{where}: not a rate limit ({{bandwidth, ops, burst}} or null)")
        for key in ("bandwidth", "ops"):
            value = plain[key]
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value <= 0):
                raise ConfigError(f"{where}: {key} must be a positive integer or null")
        if plain["bandwidth"] is None and plain["ops"] is None:
            raise ConfigError(f"{where}: a rate limit needs bandwidth or ops")
        burst = plain["burst"]
        if isinstance(burst, bool) or not isinstance(burst, (int, float)) or not 0.001 <= burst <= 60:
            raise ConfigError(f"{where}: burst must be between 0.001 and 60 seconds")
        return cls(plain["bandwidth"], plain["ops"], float(burst))

    def __eq__(self, other) -> bool:
        return isinstance(other, RateLimitSpec) and vars(self) == vars(other)

    def __repr__(self) -> str:
        return f"RateLimitSpec(bandwidth={self.bandwidth!r}, ops={self.ops!r}, burst={self.burst!r})"


class DiskSpec:
    def __init__(self, path: str, readonly: bool = False, id: Optional[str] = None,
                 rate_limit: Optional[RateLimitSpec] = None) -> None:
        self.path, self.readonly, self.id, self.rate_limit = path, readonly, id, rate_limit

    def __repr__(self) -> str:
        return (f"DiskSpec(path={self.path!r}, readonly={self.readonly}, id={self.id!r}, "
                f"rate_limit={self.rate_limit!r})")


class NetSpec:
    """A network device: the TAP it opens (`tap`, None: one made for the
    run), its MAC address (a random 52:54:00:xx:xx:xx if not given) and
    id, and a rate limit per direction."""

    def __init__(self, tap: Optional[str] = None, mac: Optional[str] = None, id: Optional[str] = None,
                 rx: Optional[RateLimitSpec] = None, tx: Optional[RateLimitSpec] = None) -> None:
        self.tap = tap
        self.mac = mac if mac is not None else random_mac()
        self.id = id
        self.rx, self.tx = rx, tx

    def __repr__(self) -> str:
        return (f"NetSpec(tap={self.tap!r}, mac={self.mac!r}, id={self.id!r}, rx={self.rx!r}, "
                f"tx={self.tx!r})")


def random_mac() -> str:
    """A locally administered unicast address in QEMU's 52:54:00 range."""
    return format_mac(b"\x52\x54\x00" + secrets.token_bytes(3))


def _pairs(option: str, text: str, keys: Iterable[str]) -> Dict[str, str]:
    values: Dict[str, str] = {}
    for item in filter(None, text.split(",")):
        key, equals, value = item.partition("=")
        if not equals:
            raise ConfigError(f"{option} {text!r}: {item!r} is not KEY=VALUE")
        if key not in keys:
            raise ConfigError(f"{option} {text!r}: unknown key {key!r} (known: {', '.join(keys)})")
        if key in values:
            raise ConfigError(f"{option} {text!r}: {key} given twice")
        values[key] = value
    return values


def parse_rng(text: str = "") -> RngSpec:
    if text and "=" not in text:
        raise ConfigError(f"--rng {text!r}: expected src=PATH (without a value, --rng takes "
                          "the next argument: give the kernel before it)")
    values = _pairs("--rng", text, ("src",))
    src = values.get("src", DEFAULT_SOURCE)
    if not src:
        raise ConfigError("--rng: src= needs a path")
    return RngSpec(src)


RATE_KEYS = ("rate_limit_bw", "rate_limit_ops", "burst")
NET_RATE_KEYS = ("rate_limit_bw", "rate_limit_ops", "rx_rate_limit_bw", "rx_rate_limit_ops",
                 "tx_rate_limit_bw", "tx_rate_limit_ops", "burst")


def parse_rate(option: str, key: str, text: str, sizes: bool) -> int:
    """'10M/s' -> 10485760 (sizes: the units of --memory), '500' -> 500."""
    value = text[:-2] if text.endswith("/s") else text
    try:
        rate = parse_size(value) if sizes else int(value.strip())
    except (ConfigError, ValueError):
        unit = "BYTES/s, e.g. 10M/s" if sizes else "OPS/s, e.g. 1000/s"
        raise ConfigError(f"{option}: {key}={text!r} is not a rate ({unit})") from None
    if rate <= 0:
        raise ConfigError(f"{option}: {key} must be positive")
    return rate


def parse_burst(option: str, text: str) -> float:
    match = _DURATION.match(text)
    if not match:
        raise ConfigError(f"{option}: burst={text!r} is not a time (e.g. 100ms or 0.5s)")
    seconds = float(match.group(1)) / (1000 if match.group(2) == "ms" else 1)
    if not 0.001 <= seconds <= 60:
        raise ConfigError(f"{option}: burst must be between 1ms and 60s")
    return seconds


def _rate_limit(option: str, values: Dict[str, str], prefix: str = "") -> Optional[RateLimitSpec]:
    """The limit the rate keys give (with `prefix`, else the unprefixed ones)."""
    def rate(name, sizes):
        text = values.get(prefix + name, values.get(name))
        return None if text is None else parse_rate(option, prefix + name if prefix + name in values else name,
                                                      text, sizes)
    bandwidth, ops = rate("rate_limit_bw", True), rate("rate_limit_ops", False)
    burst = parse_burst(option, values["burst"]) if "burst" in values else DEFAULT_BURST
    if bandwidth is None and ops is None:
        return None
    return RateLimitSpec(bandwidth, ops, burst)


def parse_disk(text: str) -> DiskSpec:
    values = _pairs("--disk", text, ("path", "readonly", "id") + RATE_KEYS)
    if not values.get("path"):
        raise ConfigError(f"--disk {text!r}: path=FILE is required")
    readonly = values.get("readonly", "off").lower()
    if readonly not in _BOOLEANS:
        raise ConfigError(f"--disk {text!r}: readonly takes on or off, not {values['readonly']!r}")
    disk_id = values.get("id")
    limit = _rate_limit("--disk", values)
    if "burst" in values and limit is None:
        raise ConfigError(f"--disk {text!r}: burst needs rate_limit_bw or rate_limit_ops")
    return DiskSpec(values["path"], _BOOLEANS[readonly], _checked_id("--disk", text, disk_id), limit)


def _checked_id(option: str, text: str, value: Optional[str]) -> Optional[str]:
    if value is not None and (not value or len(value.encode()) > ID_BYTES
                              or not value.isprintable() or not value.isascii()):
        raise ConfigError(f"{option} {text!r}: id must be 1 to {ID_BYTES} printable ASCII characters")
    return value


def parse_net(text: str) -> NetSpec:
    values = _pairs("--net", text, ("tap", "mac", "id") + NET_RATE_KEYS)
    tap = values.get("tap")
    if tap is not None:
        try:
            check_name(tap)
        except TapError as error:
            raise ConfigError(f"--net {text!r}: tap: {error}") from None
    mac = values.get("mac")
    if mac is not None:
        try:
            mac = format_mac(parse_mac(mac))
        except ValueError as error:
            raise ConfigError(f"--net {text!r}: mac: {error}") from None
    rx, tx = _rate_limit("--net", values, "rx_"), _rate_limit("--net", values, "tx_")
    if "burst" in values and rx is None and tx is None:
        raise ConfigError(f"--net {text!r}: burst needs a rate limit")
    return NetSpec(tap, mac, _checked_id("--net", text, values.get("id")), rx, tx)


def device_count(config) -> int:
    return (config.console == "virtio") + (config.rng is not None) + len(config.disks) + len(config.nets)


def check(config) -> None:
    """Raises ConfigError for virtio options that cannot work."""
    if config.console not in CONSOLES:
        raise ConfigError(f"unknown console {config.console!r} (use virtio or off)")
    if device_count(config) > MAX_DEVICES:
        raise ConfigError(f"{device_count(config)} virtio devices: at most {MAX_DEVICES} fit "
                          "the slots with an interrupt")
    ids = disk_ids(config.disks)
    for disk_id in ids:
        if ids.count(disk_id) > 1:
            raise ConfigError(f"--disk: two disks with id {disk_id!r}")
    names = net_ids(config.nets)
    for name in names:
        if names.count(name) > 1 or name in ids:
            raise ConfigError(f"--net: id {name!r} is given to two devices")
    _check_nets(config.nets)
    if config.rng is not None:
        _check_source(config.rng.src)
    files = {}
    for disk in config.disks:
        try:
            check_image(disk.path, disk.readonly)
        except ImageError as error:
            raise ConfigError(f"--disk: {error}") from None
        info = os.stat(disk.path)
        other = files.setdefault((info.st_dev, info.st_ino), disk)
        if other is not disk and not (disk.readonly and other.readonly):
            raise ConfigError(f"--disk: {disk.path} is given twice (only read-only disks may share a file)")


def _check_source(path: str) -> None:
    if os.path.isdir(path):
        raise ConfigError(f"--rng: cannot read {path}: it is a directory")
    try:
        os.close(os.open(path, os.O_RDONLY | os.O_CLOEXEC))
    except OSError as error:
        raise ConfigError(f"--rng: cannot read {path}: {error.strerror or error}") from None


def _check_nets(nets) -> None:
    taps = [net.tap for net in nets if net.tap is not None]
    for name in taps:
        if taps.count(name) > 1:
            raise ConfigError(f"--net: TAP device {name} is given twice")
        if not interface_exists(name):
            raise ConfigError(f"--net: there is no network interface {name} (create a TAP device with "
                              f"`ip tuntap add {name} mode tap user $USER`)")
    if len(taps) < len(nets) and not has_net_admin():
        raise ConfigError("--net: creating a TAP device (no tap=NAME given) needs CAP_NET_ADMIN: run as root, "
                          "or create one with `ip tuntap add NAME mode tap user $USER` and give tap=NAME")


# --- the devices' part of a snapshot's config.json -----------------------------------------

PLAIN_FIELDS = ("console", "rng", "disks", "nets")


def to_plain(config) -> dict:
    """The virtio devices of a VmConfig as plain data (a snapshot's config.json,
    where a person may edit a disk's path or a network device's TAP)."""
    def limit(spec):
        return None if spec is None else spec.to_plain()
    return {
        "console": config.console,
        "rng": None if config.rng is None else {"src": config.rng.src},
        "disks": [{"path": disk.path, "readonly": disk.readonly, "id": disk.id,
                   "rate_limit": limit(disk.rate_limit)} for disk in config.disks],
        "nets": [{"tap": net.tap, "mac": net.mac, "id": net.id, "rx": limit(net.rx), "tx": limit(net.tx)}
                 for net in config.nets],
    }


def from_plain(plain: dict, where: str) -> dict:
    """VmConfig keyword arguments from to_plain()'s data (an absent key: no
    such devices, as in snapshots made before virtio devices were saved);
    ConfigError names what is wrong."""
    console = plain.get("console", "off")
    if console not in CONSOLES:
        raise ConfigError(f"{where}: console must be one of {', '.join(CONSOLES)}")
    rng = plain.get("rng")
    if rng is not None:
        if not isinstance(rng, dict) or set(rng) != {"src"} or not isinstance(rng["src"], str) or not rng["src"]:
            raise ConfigError(f"{where}: rng must be {{\"src\": PATH}} or null")
        rng = RngSpec(rng["src"])
    disks = []
    for disk in _records(plain, "disks", ("path", "readonly", "id", "rate_limit"), where):
        if not isinstance(disk["path"], str) or not disk["path"] or not isinstance(disk["readonly"], bool) \
                or not (disk["id"] is None or isinstance(disk["id"], str)):
            raise ConfigError(f"{where}: a disk's path, readonly or id has the wrong type")
        disks.append(DiskSpec(disk["path"], disk["readonly"], _checked_id(f"{where}: disk", "", disk["id"]),
                              RateLimitSpec.from_plain(disk["rate_limit"], f"{where}: a disk's rate_limit")))
    nets = []
    for net in _records(plain, "nets", ("tap", "mac", "id", "rx", "tx"), where):
        if not (net["tap"] is None or isinstance(net["tap"], str)) or not isinstance(net["mac"], str) \
                or not (net["id"] is None or isinstance(net["id"], str)):
            raise ConfigError(f"{where}: a network device's tap, mac or id has the wrong type")
        try:
            if net["tap"] is not None:
                check_name(net["tap"])
            mac = format_mac(parse_mac(net["mac"]))
        except (TapError, ValueError) as error:
            raise ConfigError(f"{where}: a network device: {error}") from None
        nets.append(NetSpec(net["tap"], mac, _checked_id(f"{where}: network device", "", net["id"]),
                            RateLimitSpec.from_plain(net["rx"], f"{where}: a network device's rx"),
                            RateLimitSpec.from_plain(net["tx"], f"{where}: a network device's tx")))
    return {"console": console, "rng": rng, "disks": disks, "nets": nets}


def _records(plain: dict, key: str, fields: tuple, where: str) -> list:
    records = plain.get(key, [])
    if not isinstance(records, list) or len(records) > MAX_DEVICES or not all(
            isinstance(record, dict) and set(record) == set(fields) for record in records):
        raise ConfigError(f"{where}: {key} must be a list of at most {MAX_DEVICES} objects with "
                          f"{', '.join(fields)}")
    return records
