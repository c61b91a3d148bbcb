import pytest

from pyvmm import guests
from pyvmm.config import VmConfig
from pyvmm.loader import LoadOptions
from pyvmm.machine import Machine


def pytest_collection_modifyitems(items):
    for item in items:
        if item.path.parent.name == "kvm":
            item.add_marker(pytest.mark.kvm)


@pytest.fixture(scope="session")
def boot():
    return boot_guest


@pytest.fixture(scope="session")
def guest_path():
    return guests.path


def boot_guest(name, raw_mode=None, stdin=b"", devices=(), timeout=20, **config):
    """Runs bundled guest `name` to its end; returns (result, serial output, machine stats)."""
    if raw_mode is None and not name.endswith(".elf"):
        raw_mode = "long" if name == "long.bin" else "real" if name == "real.bin" else "protected"
    with open(guests.path(name), "rb") as image:
        data = image.read()
    vm_config = VmConfig(kernel=guests.path(name), serial="buffer", raw_mode=raw_mode, timeout=timeout,
                         **config)
    options = LoadOptions(raw_mode=raw_mode)
    with Machine(vm_config, data, options) as machine:
        for bus, base, length, device in devices:
            getattr(machine, f"add_{bus}_device")(base, length, device)
        if stdin:
            machine.serial.feed(stdin)
        result = machine.run()
        return result, machine.serial_output, machine.stats
