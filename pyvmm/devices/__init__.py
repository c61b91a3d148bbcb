"""Device models: pure Python, no KVM dependency (see bus.py for the contract)."""

from pyvmm.devices.acpi_pm import AcpiPm
from pyvmm.devices.bus import Bus, BusError, DeviceError, DeviceFailure
from pyvmm.devices.cmos import Cmos
from pyvmm.devices.debug_exit import DebugExit
from pyvmm.devices.debugcon import DebugConsole
from pyvmm.devices.fw_cfg import FwCfg
from pyvmm.devices.i8042 import I8042
from pyvmm.devices.pc_testdev import PcTestDev
from pyvmm.devices.pci_absent import PciConfigAbsent
from pyvmm.devices.post import PostCode
from pyvmm.devices.serial import Serial16550

__all__ = [
    "AcpiPm",
    "Bus",
    "BusError",
    "Cmos",
    "DebugConsole",
    "DebugExit",
    "DeviceError",
    "DeviceFailure",
    "FwCfg",
    "I8042",
    "PcTestDev",
    "PciConfigAbsent",
    "PostCode",
    "Serial16550",
]
