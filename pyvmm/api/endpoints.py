"""What each operation of the document does, through Machine's public API
only. A handler takes (machine, body) and returns (status, payload); a
request the machine's state does not allow is 409 with the reason."""

import os
import urllib.parse
from importlib import metadata

from ..machine import MachineStateError, SnapshotError
from .http import HttpError

PAUSE_TIMEOUT = 5.0


def _version():
    try:
        return metadata.version("pyvmm")
    except metadata.PackageNotFoundError:
        return "unknown"


# Read once, here: the API thread is sandboxed and opens no files (pyvmm.sandbox).
VERSION = _version()


def ping(machine, body):
    return 200, {"version": VERSION, "pid": os.getpid()}


def info(machine, body):
    return 200, machine.info()


def counters(machine, body):
    return 200, {**machine.exit_stats().as_dict(), "devices": machine.device_counters()}


def pause(machine, body):
    _require(machine, "running", "pause")
    if not machine.pause(PAUSE_TIMEOUT):
        if machine.state == "shutdown":
            raise HttpError(409, "the run ended while pausing")
        raise HttpError(500, f"a vCPU did not stop within {PAUSE_TIMEOUT:g} s (the pause stays asked for)")
    return 204, None


def resume(machine, body):
    _require(machine, "paused", "resume")
    machine.resume()
    return 204, None


def snapshot(machine, body):
    directory = _file_url(body["destination_url"])
    try:
        machine.snapshot(directory)
    except MachineStateError as error:
        raise HttpError(409, str(error)) from None
    except SnapshotError as error:
        raise HttpError(400, str(error)) from None
    return 204, None


def shutdown(machine, body):
    if machine.state == "shutdown":
        raise HttpError(409, "the run has already ended")
    machine.shutdown()
    return 204, None


def power_button(machine, body):
    _require(machine, "running", "press the power button")
    machine.press_power_button()
    return 204, None


def _require(machine, state, action):
    now = machine.state
    if now != state:
        raise HttpError(409, f"cannot {action}: the VM is {now}, not {state}")


def _file_url(url):
    """The absolute directory a file:///DIR URL names; 400 otherwise."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme != "file" or parts.netloc not in ("", "localhost") or parts.query or parts.fragment:
        raise HttpError(400, f"{url!r} is not a file:///DIR URL")
    path = urllib.parse.unquote(parts.path)
    if not path.startswith("/") or "\0" in path:
        raise HttpError(400, f"{url!r} does not name an absolute directory")
    return path


HANDLERS = {"vmm.ping": ping, "vm.info": info, "vm.counters": counters, "vm.pause": pause,
            "vm.resume": resume, "vm.snapshot": snapshot, "vm.shutdown": shutdown,
            "vm.power-button": power_button}
