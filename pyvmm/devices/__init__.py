"""Device models: pure Python, no KVM dependency (see bus.py for the contract)."""

from pyvmm.devices.bus import Bus, BusError, DeviceError
from pyvmm.devices.debug_exit import DebugExit
from pyvmm.devices.serial import Serial16550

__all__ = ["Bus", "BusError", "DebugExit", "DeviceError", "Serial16550"]
