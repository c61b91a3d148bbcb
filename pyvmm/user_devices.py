"""`--device PKG.MODULE:CLASS@RANGE[,KEY=VALUE...]`: a user's Python device.

RANGE is a port or port range (`0x600` or `0x600-0x60f`, inclusive) or an
MMIO range (`mmio:0xd0000000-0xd0000fff`). KEY=VALUE pairs are passed to the
class as keyword arguments; values that read as integers (`16`, `0x10`)
become ints, `true`/`false` become bools, the rest stay strings.

MODULE is imported as `python -m` would find it: from the current
directory first, then Python's path (PYTHONPATH, installed packages).
"""

import importlib
import os
import re
import sys

from .config import ConfigError

_SPEC = re.compile(r"^(?P<module>[\w.]+):(?P<cls>\w+)@(?P<mmio>mmio:)?(?P<start>\w+)"
                   r"(?:-(?P<end>\w+))?(?P<options>(?:,[^,]+)*)$")
PORT_SPACE = 0x10000


class DeviceSpec:
    def __init__(self, module, cls, bus, base, length, options):
        self.module, self.cls, self.bus = module, cls, bus
        self.base, self.length, self.options = base, length, options

    def create(self):
        """Imports the module and instantiates the class; ConfigError says what failed."""
        search_current_directory()
        try:
            module = importlib.import_module(self.module)
        except ModuleNotFoundError as error:
            if error.name is None or not (self.module + ".").startswith(error.name + "."):
                raise ConfigError(f"--device: cannot import {self.module}: {error}") from None
            raise ConfigError(f"--device: cannot import {self.module}: no module {error.name!r} "
                              f"on the search path {os.pathsep.join(sys.path)}") from None
        except Exception as error:  # whatever the module raised while it was imported
            raise ConfigError(f"--device: cannot import {self.module}: "
                              f"{type(error).__name__}: {error}") from None
        factory = getattr(module, self.cls, None)
        if factory is None:
            raise ConfigError(f"--device: {self.module} has no {self.cls}")
        try:
            device = factory(**self.options)
        except Exception as error:
            raise ConfigError(f"--device: {self.module}:{self.cls}({_show(self.options)}) "
                              f"failed: {type(error).__name__}: {error}") from None
        if not (callable(getattr(device, "read", None)) and callable(getattr(device, "write", None))):
            raise ConfigError(f"--device: {self.module}:{self.cls} has no read()/write() methods")
        return device


def search_current_directory():
    """Puts the current directory first on the module search path, as
    `python -m` does (an installed `pyvmm` script does not)."""
    here = os.getcwd()
    if "" not in sys.path and here not in sys.path:
        sys.path.insert(0, here)
    importlib.invalidate_caches()       # a module written since the last import


def parse_device_spec(text):
    match = _SPEC.match(text.strip())
    if not match:
        raise ConfigError(f"--device {text!r}: expected PKG.MODULE:CLASS@PORT[-PORT] or "
                          "PKG.MODULE:CLASS@mmio:ADDR[-ADDR], then ,KEY=VALUE options")
    start = _number(match["start"], text)
    end = start if match["end"] is None else _number(match["end"], text)
    if end < start:
        raise ConfigError(f"--device {text!r}: the range ends before it starts")
    bus = "mmio" if match["mmio"] else "port"
    if bus == "port" and end >= PORT_SPACE:
        raise ConfigError(f"--device {text!r}: ports go up to 0xffff")
    options = {}
    for item in filter(None, match["options"].split(",")):
        key, equals, value = item.partition("=")
        if not equals or not key.isidentifier():
            raise ConfigError(f"--device {text!r}: option {item!r} is not KEY=VALUE")
        options[key] = _value(value)
    return DeviceSpec(match["module"], match["cls"], bus, start, end - start + 1, options)


def _number(token, text):
    try:
        return int(token, 0)
    except ValueError:
        raise ConfigError(f"--device {text!r}: {token!r} is not a number") from None


def _value(token):
    lowered = token.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    try:
        return int(token, 0)
    except ValueError:
        return token


def _show(options):
    return ", ".join(f"{key}={value!r}" for key, value in options.items())
