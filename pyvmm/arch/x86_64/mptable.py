"""The Intel MultiProcessor Specification 1.4 table: CPUs, IOAPIC and ISA IRQ wiring.

Guests that do not read ACPI (or run with acpi=off) find the processors
here. Layout: the 16-byte floating pointer "_MP_" at base_addr, then the
"PCMP" configuration table right after it, entries in the order the
specification requires (processors, bus, IOAPIC, IO interrupts, local
interrupts). Linux scans the last KiB below 640 KiB (0x9FC00) and the BIOS
ROM area 0xF0000-0xFFFFF for the floating pointer.
"""

import struct

from . import layout

LAPIC_VERSION = 0x14            # what KVM's local APIC reports
IOAPIC_VERSION = 0x11           # what KVM's IOAPIC reports (24 pins)
MAX_XAPIC_ID = 254              # 8-bit APIC IDs; 0xFF is the broadcast ID
ISA_IRQS = layout.ISA_IRQS
PC_TIMER_PIN = 2                # the PIT's IRQ 0 arrives on IOAPIC pin 2 on PCs
BASE_MEMORY_END = 0xA0000       # 640 KiB: the EBDA ends here, the VGA hole begins

CPU_SIGNATURE = 0x600           # family 6, model 0, stepping 0 (as Firecracker)
CPU_FEATURES = 0x201            # CPUID.1:EDX FPU | APIC

OEM_ID = b"PYVMM   "            # 8 bytes
PRODUCT_ID = b"PYVMM       "    # 12 bytes

# Entry types and sizes (MP spec 1.4, chapter 4).
PROCESSOR, BUS, IOAPIC, IO_INTERRUPT, LOCAL_INTERRUPT = range(5)
ENTRY_SIZE = {PROCESSOR: 20, BUS: 8, IOAPIC: 8, IO_INTERRUPT: 8, LOCAL_INTERRUPT: 8}
INT, NMI, SMI, EXTINT = range(4)   # interrupt types
CPU_ENABLED, CPU_BSP = 1, 2
ISA_BUS_ID = 0
ALL_LAPICS = 0xFF

FLOATING_POINTER_SIZE = 16
HEADER_SIZE = 44


def checksum(data):
    """The byte that makes `data` plus itself sum to 0 mod 256."""
    return -sum(data) & 0xFF


def cpu_apic_ids(cpus, apic_ids=None):
    """The APIC ID of each CPU, BSP first: 0..cpus-1 unless given."""
    if cpus < 1:
        raise ValueError(f"need at least one CPU, got {cpus}")
    ids = list(range(cpus)) if apic_ids is None else list(apic_ids)
    if len(ids) != cpus:
        raise ValueError(f"{len(ids)} APIC IDs given for {cpus} CPUs")
    if len(set(ids)) != cpus or min(ids) < 0:
        raise ValueError(f"APIC IDs must be distinct and non-negative: {ids}")
    return ids


def ioapic_id(apic_ids):
    """An 8-bit ID no CPU uses (just above the highest, as QEMU and Firecracker
    pick), or None when CPUs hold all 255."""
    above = max(apic_ids) + 1
    if above <= MAX_XAPIC_ID:
        return above
    used = set(apic_ids)
    return next((candidate for candidate in range(MAX_XAPIC_ID + 1) if candidate not in used), None)


def isa_irq_pins(irq0_pin):
    """[(ISA IRQ, IOAPIC pin)]: identity, except IRQ 0 may be rerouted to pin 2,
    in which case IRQ 2 (the cascade, never a device) is left out as SeaBIOS does."""
    if irq0_pin not in (0, PC_TIMER_PIN):
        raise ValueError(f"IRQ 0 is wired to IOAPIC pin 0 or 2, not {irq0_pin}")
    pins = []
    for irq in range(ISA_IRQS):
        if irq == 0:
            pins.append((0, irq0_pin))
        elif irq == irq0_pin:
            continue
        else:
            pins.append((irq, irq))
    return pins


def mptable_size(cpus, irq0_pin=PC_TIMER_PIN):
    """Bytes build_mptable returns for `cpus` processors."""
    return (FLOATING_POINTER_SIZE + HEADER_SIZE + ENTRY_SIZE[PROCESSOR] * cpus
            + ENTRY_SIZE[BUS] + ENTRY_SIZE[IOAPIC]
            + ENTRY_SIZE[IO_INTERRUPT] * len(isa_irq_pins(irq0_pin))
            + ENTRY_SIZE[LOCAL_INTERRUPT] * 2)


def max_cpus_below_640k(base_addr, irq0_pin=PC_TIMER_PIN):
    """How many CPUs fit between base_addr and 640 KiB (40 at 0x9FC00)."""
    fixed = mptable_size(0, irq0_pin)
    return max(0, (BASE_MEMORY_END - base_addr - fixed) // ENTRY_SIZE[PROCESSOR])


def processor_entry(apic_id, bsp, signature, features):
    flags = CPU_ENABLED | (CPU_BSP if bsp else 0)
    return struct.pack("<BBBBII8x", PROCESSOR, apic_id, LAPIC_VERSION, flags, signature, features)


def bus_entry(bus_id, bus_type):
    return struct.pack("<BB6s", BUS, bus_id, bus_type)


def ioapic_entry(apic_id, address):
    return struct.pack("<BBBBI", IOAPIC, apic_id, IOAPIC_VERSION, 1, address)   # 1: usable


def interrupt_entry(kind, irq_type, bus_irq, dest_id, dest_pin):
    # flags 0: polarity and trigger conform to the ISA bus (active high, edge)
    return struct.pack("<BBHBBBB", kind, irq_type, 0, ISA_BUS_ID, bus_irq, dest_id, dest_pin)


def build_mptable(base_addr, cpus, apic_ids=None, *, irq0_pin=PC_TIMER_PIN,
                  cpu_signature=CPU_SIGNATURE, cpu_features=CPU_FEATURES):
    """The MP floating pointer and configuration table to write at base_addr.

    `apic_ids` lists each CPU's APIC ID (CPU 0 is the bootstrap processor);
    `irq0_pin` is the IOAPIC pin the PIT's IRQ 0 is wired to (2 on PCs and
    QEMU, which reroutes GSI 0; 0 with KVM's default identity GSI routing).
    Raises ValueError when an APIC ID does not fit the table's 8 bits or
    when the table would not fit below 640 KiB.
    """
    ids = cpu_apic_ids(cpus, apic_ids)
    if max(ids) > MAX_XAPIC_ID:
        raise ValueError(f"APIC ID {max(ids)} does not fit an MP table (8-bit IDs, at most "
                         f"{MAX_XAPIC_ID}): describe these CPUs with ACPI only")
    if base_addr % 16:
        raise ValueError(f"MP floating pointer at {base_addr:#x} is not 16-byte aligned")
    size = mptable_size(cpus, irq0_pin)
    if base_addr < BASE_MEMORY_END < base_addr + size:
        raise ValueError(
            f"MP table for {cpus} CPUs is {size} bytes and would run past 640 KiB "
            f"({BASE_MEMORY_END:#x}) from {base_addr:#x}; at most "
            f"{max_cpus_below_640k(base_addr, irq0_pin)} CPUs fit there: place it in the BIOS area "
            f"0xF0000-0xFFFFF instead")
    io_apic = ioapic_id(ids)
    if io_apic is None:
        raise ValueError(f"{cpus} CPUs take every 8-bit APIC ID: none is left for the IOAPIC")

    entries = [processor_entry(apic_id, index == 0, cpu_signature, cpu_features)
               for index, apic_id in enumerate(ids)]
    entries.append(bus_entry(ISA_BUS_ID, b"ISA   "))
    entries.append(ioapic_entry(io_apic, layout.IOAPIC_BASE))
    entries += [interrupt_entry(IO_INTERRUPT, INT, irq, io_apic, pin)
                for irq, pin in isa_irq_pins(irq0_pin)]
    # The 8259 reaches the BSP through LINT0 (virtual wire); NMIs reach every CPU on LINT1.
    entries.append(interrupt_entry(LOCAL_INTERRUPT, EXTINT, 0, ids[0], 0))
    entries.append(interrupt_entry(LOCAL_INTERRUPT, NMI, 0, ALL_LAPICS, 1))
    body = b"".join(entries)

    header = bytearray(struct.pack(
        "<4sHBB8s12sIHHIHBx", b"PCMP", HEADER_SIZE + len(body), 4, 0, OEM_ID, PRODUCT_ID,
        0, 0, len(entries), layout.LAPIC_BASE, 0, 0))
    header[7] = checksum(header + body)

    config_addr = base_addr + FLOATING_POINTER_SIZE
    # length 1 (in 16-byte units), spec revision 1.4, feature byte 1 = 0: a
    # configuration table is present; feature byte 2 = 0: virtual wire mode, no IMCR.
    pointer = bytearray(struct.pack("<4sIBBB5x", b"_MP_", config_addr, 1, 4, 0))
    pointer[10] = checksum(pointer)
    table = bytes(pointer + header) + body
    assert len(table) == size
    return table
