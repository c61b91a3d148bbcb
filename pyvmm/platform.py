"""The PC platform around the CPUs: legacy devices at their usual ports and
the firmware tables (ACPI, MP) that describe the machine to a kernel.

QEMU's choices are followed where a kernel written for `qemu -kernel` can
tell the difference; each device is a plain object from pyvmm.devices.
"""

import sys

from .arch.x86_64 import acpi, layout, mptable
from .devices import AcpiPm, Cmos, DebugConsole, FwCfg, I8042, PcTestDev, PciConfigAbsent, PostCode
from .devices import acpi_pm
from .stop import STATUS_OK

# KVM's default GSI routing wires ISA IRQ n to IOAPIC pin n, the PIT's IRQ 0
# included; the tables must say so (QEMU reroutes it to pin 2 instead).
IRQ0_PIN = 0
DEBUGCON_PORT = 0xE9
POST_PORT = 0x80
CMOS_PORT = 0x70
PCI_CONFIG_PORT = 0xCF8
FW_CFG_PORT = 0x510
TESTDEV_MMIO = 0xFF000000
CMDLINE_IN_FW_CFG = ("bzImage", "pvh")


class PcPlatform:
    """Creates the legacy devices, registers them on the buses, writes the tables.

    `set_irq(line, level)` drives an ISA interrupt line; `stop` is the VM's
    StopSignal (reset and power-off end the run with status 0); `console`
    receives debug-console bytes.
    """

    def __init__(self, config, port_bus, mmio_bus, stop, set_irq, console, boot_format=None):
        self.stop = stop
        self.i8042 = I8042(on_reset=self._reset)
        self.cmos = Cmos(config.memory, cpus=config.cpus)
        self.post = PostCode()
        self.debugcon = DebugConsole(console)
        self.pm = AcpiPm(on_poweroff=self._poweroff, on_reset=self._reset, on_sleep=self._sleep,
                         set_sci=lambda level: set_irq(acpi_pm.SCI_IRQ, level))
        # The reset control register 0xcf9 sits inside the PCI config ports.
        self.pci = PciConfigAbsent(reset_control=self.pm.reset_control)
        # QEMU fills fw_cfg's command line only for Linux and PVH kernels.
        cmdline = config.cmdline if boot_format in CMDLINE_IN_FW_CFG else None
        self.fw_cfg = FwCfg(config.memory, config.cpus, cmdline)
        self.testdev = PcTestDev(set_irq)

        for base, length, device, name in self.i8042.port_ranges():
            port_bus.register(base, length, device, name=name)
        for base, length, device, name in self.testdev.port_ranges():
            port_bus.register(base, length, device, name=name)
        port_bus.register(CMOS_PORT, 2, self.cmos, name="cmos/rtc")
        port_bus.register(POST_PORT, 1, self.post, name="post")
        port_bus.register(DEBUGCON_PORT, 1, self.debugcon, name="debugcon")
        port_bus.register(acpi_pm.PM_BASE, acpi_pm.PM_LENGTH, self.pm, name="acpi-pm")
        port_bus.register(PCI_CONFIG_PORT, 8, self.pci, name="pci-config (no devices)")
        port_bus.register(FW_CFG_PORT, 2, self.fw_cfg, name="fw_cfg")
        mmio_bus.register(TESTDEV_MMIO, 0x10000, self.testdev.iomem, name="pc-testdev iomem")

    @staticmethod
    def write_firmware_tables(memory, cpus, virtio=()):
        """ACPI and MP tables into the BIOS area; returns the RSDP's address.
        `virtio`: the virtio-mmio transports for the DSDT (VirtioSlots.acpi_devices)."""
        tables, rsdp = acpi.build_acpi_tables(layout.ACPI_TABLES, cpus, irq0_pin=IRQ0_PIN,
                                              virtio=virtio)
        memory.write(layout.ACPI_TABLES, tables)
        memory.write(layout.MPTABLE, mptable.build_mptable(layout.MPTABLE, cpus, irq0_pin=IRQ0_PIN))
        return rsdp

    def _reset(self):
        self.stop.request(STATUS_OK, "reset")

    def _poweroff(self):
        self.stop.request(STATUS_OK, "poweroff")

    def _sleep(self, state):
        # QEMU parks an S3 guest until a wake-up event; pyvmm has no wake
        # source, so the run ends here rather than idling forever.
        print(f"warning: the guest entered ACPI S{state} sleep; nothing can wake it, "
              "so the run ends", file=sys.stderr)
        self.stop.request(STATUS_OK, f"sleep-s{state}")
