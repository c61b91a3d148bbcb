"""The virtio options of `pyvmm run`, in Cloud Hypervisor's syntax.

    --console virtio                            a virtio console (hvc0) on the serial output
    --rng [src=PATH]                            entropy from PATH (default /dev/urandom)
    --disk path=FILE[,readonly=on][,id=NAME]    a virtio-blk disk on a raw image (repeatable)

Values are KEY=VALUE pairs separated by commas; booleans take on/off (or
true/false). `check` refuses what cannot work before the VM is built: an
unknown key, a missing or unreadable file, an image another VM holds, an
id too long for the 20-byte virtio-blk serial, more devices than slots
with an interrupt. The machine opens the files for good
(pyvmm.machine.virtio), before anything else of the VM exists.
"""

from __future__ import annotations

import os
from typing import Dict, Iterable, Optional

from .arch.x86_64 import layout
from .config import ConfigError
from .devices.virtio.blk import disk_ids
from .devices.virtio.image import ImageError, check_image
from .devices.virtio.rng import DEFAULT_SOURCE

CONSOLES = ("off", "virtio")
ID_BYTES = 20
MAX_DEVICES = layout.VIRTIO_MMIO_SLOTS - layout.VIRTIO_FIRST_IRQ_SLOT
_BOOLEANS = {"on": True, "true": True, "off": False, "false": False}


class RngSpec:
    def __init__(self, src: str = DEFAULT_SOURCE) -> None:
        self.src = src

    def __repr__(self) -> str:
        return f"RngSpec(src={self.src!r})"


class DiskSpec:
    def __init__(self, path: str, readonly: bool = False, id: Optional[str] = None) -> None:
        self.path, self.readonly, self.id = path, readonly, id

    def __repr__(self) -> str:
        return f"DiskSpec(path={self.path!r}, readonly={self.readonly}, id={self.id!r})"


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


def parse_disk(text: str) -> DiskSpec:
    values = _pairs("--disk", text, ("path", "readonly", "id"))
    if not values.get("path"):
        raise ConfigError(f"--disk {text!r}: path=FILE is required")
    readonly = values.get("readonly", "off").lower()
    if readonly not in _BOOLEANS:
        raise ConfigError(f"--disk {text!r}: readonly takes on or off, not {values['readonly']!r}")
    disk_id = values.get("id")
    if disk_id is not None and (not disk_id or len(disk_id.encode()) > ID_BYTES
                                or not disk_id.isprintable() or not disk_id.isascii()):
        raise ConfigError(f"--disk {text!r}: id must be 1 to {ID_BYTES} printable ASCII characters")
    return DiskSpec(values["path"], _BOOLEANS[readonly], disk_id)


def device_count(config) -> int:
    return (config.console == "virtio") + (config.rng is not None) + len(config.disks)


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
