"""The machine's address map, declared once: where pyvmm puts its boot
structures in guest-physical memory, and where every device of the PC
platform sits (ports, MMIO, interrupt lines). The device manager
(pyvmm.machine.devices) registers the devices here, the ACPI and MP tables
(acpi.py, mptable.py) describe them from here, and the loaders keep clear
of the boot structures; device models only know offsets in their own range.

The boot structures' addresses below are the usual ones, all in the first
1 MiB. A structure the kernel would overlap moves
(pyvmm.loader.common.GuestWriter.place): to the lowest free place in
conventional memory (BOOT_DATA_LOW), else above 1 MiB. Only the firmware
tables in the BIOS area never move.
"""

from typing import NamedTuple


class Window(NamedTuple):
    """A device's range: `length` ports or bytes from `base`."""
    base: int
    length: int


BOOT_GDT = 0x0500             # 5 descriptors, then the IDT
BOOT_IDT = 0x0540             # empty IDT: limit 0
BOOT_GDT_SIZE = 0x48          # the GDT and the IDT as one block
PML4 = 0x1000                 # identity map of the first 4 GiB:
PDPT = 0x2000                 #   PML4 -> PDPT -> 4 page directories of
PAGE_DIRECTORIES = 0x3000     #   2 MiB pages at 0x3000..0x6fff
PAGE_TABLES_SIZE = 0x6000     # PML4, PDPT and the directories, from PML4 on
BOOT_STACK_TOP = 0x8FF0       # initial stack pointer in every mode (stack at 0x8000..0x8fff)
STACK_SIZE = 0x1000
STACK_TOP_OFFSET = BOOT_STACK_TOP & 0xFFF

REAL_MODE_LOAD = 0x7C00       # default load address of a real-mode binary
HIGH_MEMORY = 0x100000        # default load address of a 32/64-bit binary

ZERO_PAGE = 0x7000            # Linux boot_params ("zero page"), 4 KiB
BOOT_INFO = 0x9000            # multiboot info / PVH hvm_start_info and their tables
BOOT_INFO_SIZE = 0x4000       # the most they may take
CMDLINE = 0x20000             # kernel command line, NUL-terminated
CMDLINE_MAX = 0x10000
EBDA_START = 0x9FC00          # e820: [EBDA_START, 1 MiB) is not RAM
BIOS_AREA = 0xE0000           # firmware tables live in [0xE0000, 0x100000)
BIOS_AREA_END = 0x100000
# Both where every scanner looks: the BIOS ROM area [0xF0000, 0x100000)
# (kvm-unit-tests scans only there for the RSDP; Linux scans it for "_MP_").
ACPI_TABLES = 0xF0000         # RSDP first; 10 KiB for 254 vCPUs
MPTABLE = 0xF8000             # MP floating pointer + table; 5.3 KiB for 254 vCPUs

# Conventional memory above the real-mode interrupt table and BIOS data
# area: where boot structures go first when their usual place is taken.
BOOT_DATA_LOW = (0x0500, EBDA_START)
REAL_MODE_SEGMENT = 0x10000   # what SS:SP reaches from a segment base

IDENTITY_MAPPED = 4 << 30     # the page tables map [0, 4 GiB)

MIN_MEMORY = 1 << 20          # the memory map needs the first 1 MiB

MMIO_HOLE_START = 0xC0000000  # [3 GiB, 4 GiB) is left for device MMIO
FOUR_GIB = 1 << 32


def ram_ranges(size):
    """[(guest address, size)] of guest RAM for `size` bytes of memory."""
    if size <= MMIO_HOLE_START:
        return [(0, size)]
    return [(0, MMIO_HOLE_START), (FOUR_GIB, size - MMIO_HOLE_START)]

# --- KVM's own pages: inside guest-physical space but outside RAM, just
# below the BIOS (three pages for the real-mode TSS, one for the EPT
# identity map).
KVM_TSS = 0xFFFBD000
KVM_IDENTITY_MAP = 0xFFFBC000

ISA_IRQS = 16                 # IRQ 0-15 reach the PIC and the IOAPIC; GSI 16-23 the IOAPIC only

# KVM's default GSI routing wires ISA IRQ n to IOAPIC pin n, the PIT's IRQ 0
# included; the ACPI and MP tables must say so (QEMU reroutes it to pin 2).
IRQ0_PIN = 0

# --- the PC platform's devices -------------------------------------------------
# Ports (QEMU's pc/q35 machines put the same devices at the same places).
COM1 = Window(0x3F8, 8)                # 16550A UART
COM1_IRQ = 4
DEBUG_EXIT = Window(0xF4, 4)           # QEMU's isa-debug-exit, as -device ...,iobase=0xf4,iosize=0x04
I8042_DATA = Window(0x60, 1)           # 0x61 between them is the PIT's speaker port (in KVM)
I8042_COMMAND = Window(0x64, 1)
I8042_KEYBOARD_IRQ = 1
I8042_MOUSE_IRQ = 12
CMOS = Window(0x70, 2)                 # index, data
RTC_IRQ = 8
POST = Window(0x80, 1)
DEBUGCON = Window(0xE9, 1)             # QEMU's debug console
PC_TESTDEV_PORTS = Window(0xE0, 8)     # QEMU's pc-testdev (kvm-unit-tests)
PC_TESTDEV_IRQ_LINES = Window(0x2000, 24)
FW_CFG = Window(0x510, 2)              # selector, data
ACPI_PM = Window(0x600, 0x0C)          # PM1a event (4), PM1a control (2, at +4), PM timer (4, at +8)
SCI_IRQ = 9
PCI_CONFIG = Window(0xCF8, 8)          # address, data; no PCI devices
ACPI_RESET_PORT = 0xCF9                # the FADT's reset register, inside PCI_CONFIG

# MMIO.
PC_TESTDEV_MMIO = Window(0xFF000000, 0x10000)
IOAPIC_BASE = 0xFEC00000               # KVM's in-kernel IOAPIC (24 pins)
LAPIC_BASE = 0xFEE00000                # KVM's in-kernel local APICs

# virtio-mmio transports, where QEMU's microvm machine puts them: 24 slots of
# 0x200 bytes from 0xfeb00000, filled from the top (the first device at
# 0xfeb02e00). Slot n interrupts on IOAPIC pin n, for the top 8 slots
# (16-23, the pins no ISA device uses); QEMU's microvm wires slot n to pin
# 24 + n of a second IOAPIC, which KVM's in-kernel irqchip does not have.
VIRTIO_MMIO_BASE = 0xFEB00000
VIRTIO_MMIO_SLOT_SIZE = 0x200           # one Window(base, VIRTIO_MMIO_SLOT_SIZE) per slot
VIRTIO_MMIO_SLOTS = 24
VIRTIO_FIRST_IRQ_SLOT = 16


def virtio_slot(slot):
    """(MMIO base, IRQ) of virtio-mmio slot `slot`; IRQ None for slots without one."""
    if not 0 <= slot < VIRTIO_MMIO_SLOTS:
        raise ValueError(f"virtio-mmio slot {slot} (0-{VIRTIO_MMIO_SLOTS - 1})")
    irq = slot if slot >= VIRTIO_FIRST_IRQ_SLOT else None
    return VIRTIO_MMIO_BASE + slot * VIRTIO_MMIO_SLOT_SIZE, irq
