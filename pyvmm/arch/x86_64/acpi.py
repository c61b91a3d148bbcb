"""ACPI tables (ACPI 6.3): RSDP, RSDT, XSDT, FADT, FACS, MADT and a small DSDT.

build_acpi_tables lays them out as one blob to write at base_addr, RSDP
first, so a guest scanning 16-byte boundaries of the BIOS area finds it.
Both an RSDT and an XSDT are provided: Linux prefers the XSDT, while small
test kernels (kvm-unit-tests) only follow the RSDP's RSDT pointer.

The machine is a full-hardware (not hardware-reduced) PC: PM1a event and
control blocks and a PM timer at I/O ports, SCI on IRQ 9, a reset register,
and a DSDT whose \\_S5_ and \\_S3_ give the SLP_TYP values to write to PM1a_CNT.
"""

import collections
import struct

from ...devices import acpi_pm
from . import layout
from .modes import PROTECTED, REAL
from .mptable import MAX_XAPIC_ID, PC_TIMER_PIN, checksum, cpu_apic_ids, ioapic_id

OEM_ID = b"PYVMM "              # 6 bytes
OEM_TABLE_ID = b"PYVMMACP"      # 8 bytes
OEM_REVISION = 1
CREATOR_ID = b"PYVM"
CREATOR_REVISION = 1
HYPERVISOR_ID = b"PYVMMKVM"     # FADT Hypervisor Vendor Identity

HEADER_SIZE = 36
RSDP_SIZE = 36
FADT_SIZE = 276                 # FADT revision 6
FACS_SIZE = 64

# The PM device's ports and values (QEMU q35's ICH9 layout and DSDT sleep types).
PmRegisters = collections.namedtuple("PmRegisters", [
    "pm1_evt",        # PM1a_EVT_BLK: status (2 bytes) then enable (2 bytes)
    "pm1_cnt",        # PM1a_CNT_BLK: SCI_EN, SLP_TYP, SLP_EN
    "pm_tmr",         # PM_TMR_BLK: 3.579545 MHz counter
    "reset_port",     # RESET_REG in system I/O space
    "reset_value",
    "slp_typ_s5",
    "slp_typ_s3",
    "sci_irq",
    "timer_32bit",    # PM timer counts 32 bits (else 24): FADT TMR_VAL_EXT
    "pm1_evt_len",
    "pm1_cnt_len",
], defaults=[layout.ACPI_PM.base + acpi_pm.EVT_OFFSET, layout.ACPI_PM.base + acpi_pm.CNT_OFFSET,
             layout.ACPI_PM.base + acpi_pm.TMR_OFFSET, layout.ACPI_RESET_PORT,
             acpi_pm.RESET_VALUE, acpi_pm.SLP_TYP_S5, acpi_pm.SLP_TYP_S3, layout.SCI_IRQ,
             acpi_pm.PM_TMR_BITS == 32, acpi_pm.PM1_EVT_LEN, acpi_pm.PM1_CNT_LEN])
DEFAULT_PM = PmRegisters()
PM_TMR_LEN = 4

# FADT Flags (ACPI 6.3, 5.2.9).
WBINVD = 1 << 0
PROC_C1 = 1 << 2
SLP_BUTTON = 1 << 5             # no fixed-feature sleep button (the power button is fixed)
FIX_RTC = 1 << 6                # no RTC wake status in PM1 (left clear: RTC_STS/RTC_EN work, as in QEMU)
TMR_VAL_EXT = 1 << 8
RESET_REG_SUP = 1 << 10

# FADT IA-PC boot architecture flags.
LEGACY_DEVICES = 1 << 0
I8042 = 1 << 1
VGA_NOT_PRESENT = 1 << 2
CMOS_RTC_NOT_PRESENT = 1 << 5
BOOT_ARCH = LEGACY_DEVICES | I8042

RTC_CENTURY = 0x32              # CMOS index of the century byte (pyvmm/devices/cmos.py, QEMU)
C2_UNSUPPORTED = 0x0FFF         # P_LVL2_LAT > 100 and P_LVL3_LAT > 1000: only C1
SYSTEM_IO = 1                   # generic address structure: address space ID
BYTE, WORD, DWORD = 1, 2, 3     # generic address structure: access size

# MADT entry types (ACPI 6.3, 5.2.12) and flags.
LOCAL_APIC, IO_APIC, INTERRUPT_OVERRIDE, LOCAL_APIC_NMI = 0, 1, 2, 4
LOCAL_X2APIC, LOCAL_X2APIC_NMI = 9, 10
PCAT_COMPAT = 1                 # dual 8259s present: the guest must mask them
ENABLED = 1
ACTIVE_HIGH_LEVEL = 0x000D      # MPS INTI flags: polarity 01, trigger 11
ALL_PROCESSORS = 0xFF
ALL_X2_PROCESSORS = 0xFFFFFFFF


def align(addr, alignment):
    return -(-addr // alignment) * alignment


def facs_address(base_addr):
    """Where build_acpi_tables(base_addr, ...) puts the FACS: right after the
    RSDP, 64-byte aligned. Firmware reads its waking vector there on resume."""
    return align(base_addr + RSDP_SIZE, 64)


def sdt(signature, revision, body):
    """A system description table: the 36-byte header, `body`, a checksum over all."""
    table = bytearray(struct.pack("<4sIBB6s8sI4sI", signature, HEADER_SIZE + len(body),
                                  revision, 0, OEM_ID, OEM_TABLE_ID, OEM_REVISION,
                                  CREATOR_ID, CREATOR_REVISION) + body)
    table[9] = checksum(table)
    return bytes(table)


def rsdp(rsdt_addr, xsdt_addr):
    """Revision 2 RSDP: the first checksum covers 20 bytes, the extended one all 36."""
    table = bytearray(struct.pack("<8sB6sBIIQB3x", b"RSD PTR ", 0, OEM_ID, 2, rsdt_addr,
                                  RSDP_SIZE, xsdt_addr, 0))
    table[8] = checksum(table[:20])
    table[32] = checksum(table)
    return bytes(table)


def gas(space, bit_width, access_size, address):
    """Generic address structure (12 bytes); bit offset 0."""
    return struct.pack("<BBBBQ", space, bit_width, 0, access_size, address)


def io_gas(port, length, access_size):
    return gas(SYSTEM_IO, length * 8, access_size, port) if port else bytes(12)


def fadt(facs_addr, dsdt_addr, pm, boot_arch=BOOT_ARCH):
    """FADT revision 6.3. SMI_CMD is 0: the machine is always in ACPI mode."""
    flags = WBINVD | PROC_C1 | SLP_BUTTON | RESET_REG_SUP
    if pm.timer_32bit:
        flags |= TMR_VAL_EXT
    # Offsets in the comments are the spec's, from the start of the table.
    body = b"".join([
        # 36 FIRMWARE_CTRL, 40 DSDT
        struct.pack("<II", facs_addr, dsdt_addr),
        # 44 reserved, 45 preferred PM profile (unspecified), 46 SCI_INT
        struct.pack("<BBH", 0, 0, pm.sci_irq),
        # 48 SMI_CMD, 52 ACPI_ENABLE, ACPI_DISABLE, S4BIOS_REQ, PSTATE_CNT
        struct.pack("<IBBBB", 0, 0, 0, 0, 0),
        # 56 PM1a_EVT_BLK, 60 PM1b_EVT_BLK, 64 PM1a_CNT_BLK, 68 PM1b_CNT_BLK,
        # 72 PM2_CNT_BLK, 76 PM_TMR_BLK, 80 GPE0_BLK, 84 GPE1_BLK
        struct.pack("<8I", pm.pm1_evt, 0, pm.pm1_cnt, 0, 0, pm.pm_tmr, 0, 0),
        # 88 PM1_EVT_LEN, PM1_CNT_LEN, PM2_CNT_LEN, PM_TMR_LEN, GPE0/1_BLK_LEN, GPE1_BASE, CST_CNT
        struct.pack("<8B", pm.pm1_evt_len, pm.pm1_cnt_len, 0, PM_TMR_LEN, 0, 0, 0, 0),
        # 96 P_LVL2_LAT, 98 P_LVL3_LAT, 100 FLUSH_SIZE, 102 FLUSH_STRIDE
        struct.pack("<HHHH", C2_UNSUPPORTED, C2_UNSUPPORTED, 0, 0),
        # 104 DUTY_OFFSET, DUTY_WIDTH, DAY_ALRM, MON_ALRM, 108 CENTURY,
        # 109 IAPC_BOOT_ARCH, 111 reserved, 112 Flags
        struct.pack("<BBBBBHBI", 0, 0, 0, 0, RTC_CENTURY, boot_arch, 0, flags),
        # 116 RESET_REG, 128 RESET_VALUE, 129 ARM_BOOT_ARCH, 131 FADT minor version (6.3)
        io_gas(pm.reset_port, 1, BYTE),
        struct.pack("<BHB", pm.reset_value, 0, 3),
        # 132 X_FIRMWARE_CTRL, 140 X_DSDT. The spec allows one FACS pointer:
        # the 32-bit one, which small kernels read. Both DSDT pointers are set.
        struct.pack("<QQ", 0, dsdt_addr),
        # 148 X_PM1a_EVT_BLK, 160 X_PM1b_EVT_BLK, 172 X_PM1a_CNT_BLK,
        # 184 X_PM1b_CNT_BLK, 196 X_PM2_CNT_BLK, 208 X_PM_TMR_BLK
        io_gas(pm.pm1_evt, pm.pm1_evt_len, WORD), bytes(12),
        io_gas(pm.pm1_cnt, pm.pm1_cnt_len, WORD), bytes(12), bytes(12),
        io_gas(pm.pm_tmr, PM_TMR_LEN, DWORD),
        # 220 X_GPE0_BLK, 232 X_GPE1_BLK, 244 SLEEP_CONTROL_REG, 256 SLEEP_STATUS_REG
        bytes(12 * 4),
        # 268 hypervisor vendor identity
        HYPERVISOR_ID,
    ])
    table = sdt(b"FACP", 6, body)
    assert len(table) == FADT_SIZE
    return table


def facs():
    """FACS version 2: no hardware signature, waking vectors and global lock start at 0."""
    return struct.pack("<4sIIIIIQB3xI24x", b"FACS", FACS_SIZE, 0, 0, 0, 0, 0, 2, 0)


# FACS fields the guest writes before S3 (ACPI 6.3, table 5-37).
FACS_LENGTH, FACS_WAKING_VECTOR, FACS_X_WAKING_VECTOR, FACS_VERSION = 4, 12, 24, 32


class WakingVector(collections.namedtuple("WakingVector", "mode address")):
    """Where firmware resumes the OS after S3: mode REAL or PROTECTED, and the address."""


def waking_vector(table):
    """The WakingVector in the FACS bytes `table` as the guest left them, or
    None (no "FACS" signature, or no vector: firmware reboots then).

    X_Firmware_Waking_Vector, when the FACS has it (longer than 32 bytes,
    version 1 or later: ACPICA's test), is set and below 4 GiB, wins
    (entered in 32-bit protected mode: the FACS does not offer 64-bit
    wake); else Firmware_Waking_Vector (real mode), as the spec says.
    SeaBIOS only ever reads Firmware_Waking_Vector; OVMF does this."""
    if len(table) <= FACS_VERSION or table[:4] != b"FACS":
        return None
    length, = struct.unpack_from("<I", table, FACS_LENGTH)
    vector, = struct.unpack_from("<I", table, FACS_WAKING_VECTOR)
    if length > FACS_VERSION and table[FACS_VERSION] >= 1:
        x_vector, = struct.unpack_from("<Q", table, FACS_X_WAKING_VECTOR)
        if 0 < x_vector < 1 << 32:
            return WakingVector(PROTECTED, x_vector)
    if vector:
        return WakingVector(REAL, vector)
    return None


def madt(apic_ids, sci_irq, irq0_pin=PC_TIMER_PIN):
    """MADT revision 5: every CPU, one IOAPIC with GSIs from 0, ISA overrides, NMIs on LINT1."""
    entries = []
    x2apic = False
    for uid, apic_id in enumerate(apic_ids):
        # APIC IDs below 255 must use the xAPIC entry; larger ones need x2APIC.
        if apic_id <= MAX_XAPIC_ID:
            entries.append(struct.pack("<BBBBI", LOCAL_APIC, 8, uid, apic_id, ENABLED))
        else:
            x2apic = True
            entries.append(struct.pack("<BBHIII", LOCAL_X2APIC, 16, 0, apic_id, ENABLED, uid))
    io_apic = ioapic_id(apic_ids)
    if io_apic is None:
        io_apic = 0     # CPUs hold all 255 IDs; xAPIC-era IOAPICs do not arbitrate by ID anyway
    entries.append(struct.pack("<BBBBII", IO_APIC, 12, io_apic, 0, layout.IOAPIC_BASE, 0))
    if irq0_pin != 0:
        # bus 0 (ISA); flags 0: edge, active high as the ISA bus
        entries.append(struct.pack("<BBBBIH", INTERRUPT_OVERRIDE, 10, 0, 0, irq0_pin, 0))
    entries.append(struct.pack("<BBBBIH", INTERRUPT_OVERRIDE, 10, 0, sci_irq, sci_irq,
                               ACTIVE_HIGH_LEVEL))
    entries.append(struct.pack("<BBBHB", LOCAL_APIC_NMI, 6, ALL_PROCESSORS, 0, 1))
    if x2apic:
        entries.append(struct.pack("<BBHIB3x", LOCAL_X2APIC_NMI, 12, 0, ALL_X2_PROCESSORS, 1))
    body = struct.pack("<II", layout.LAPIC_BASE, PCAT_COMPAT) + b"".join(entries)
    return sdt(b"APIC", 5, body)


# --- AML: just enough of the ACPI Machine Language to name objects -----------
NAME_OP, SCOPE_OP, BUFFER_OP, PACKAGE_OP = 0x08, 0x10, 0x11, 0x12
EXT_OP_PREFIX, DEVICE_OP = 0x5B, 0x82
ZERO_OP, ONE_OP = 0x00, 0x01
BYTE_PREFIX, WORD_PREFIX, DWORD_PREFIX, STRING_PREFIX, QWORD_PREFIX = 0x0A, 0x0B, 0x0C, 0x0D, 0x0E
ROOT_CHAR, DUAL_NAME_PREFIX, MULTI_NAME_PREFIX = 0x5C, 0x2E, 0x2F


def aml_pkg_length(body_length):
    """PkgLength encoding for a body of `body_length` bytes; the length counts itself."""
    if body_length + 1 < 0x40:
        return bytes([body_length + 1])
    for extra in (1, 2, 3):
        total = body_length + 1 + extra
        if total < 1 << (4 + 8 * extra):
            encoded = [extra << 6 | total & 0x0F]
            encoded += [(total >> (4 + 8 * i)) & 0xFF for i in range(extra)]
            return bytes(encoded)
    raise ValueError(f"AML package of {body_length} bytes is too long")


def aml_name(path):
    """NameString for e.g. "\\_S5_" or "_SB_.C000"; segments shorter than 4 are padded with '_'."""
    prefix = b""
    if path.startswith("\\"):
        prefix, path = bytes([ROOT_CHAR]), path[1:]
    segments = [segment.ljust(4, "_").encode("ascii") for segment in path.split(".")]
    if any(len(segment) != 4 for segment in segments):
        raise ValueError(f"AML name segments are at most 4 characters: {path!r}")
    if len(segments) == 1:
        return prefix + segments[0]
    if len(segments) == 2:
        return prefix + bytes([DUAL_NAME_PREFIX]) + b"".join(segments)
    return prefix + bytes([MULTI_NAME_PREFIX, len(segments)]) + b"".join(segments)


def aml_integer(value):
    """The shortest integer encoding, as iasl emits it."""
    if value in (0, 1):
        return bytes([ZERO_OP if value == 0 else ONE_OP])
    for prefix, fmt, limit in ((BYTE_PREFIX, "<B", 0xFF), (WORD_PREFIX, "<H", 0xFFFF),
                               (DWORD_PREFIX, "<I", 0xFFFFFFFF), (QWORD_PREFIX, "<Q", 2**64 - 1)):
        if 0 <= value <= limit:
            return bytes([prefix]) + struct.pack(fmt, value)
    raise ValueError(f"AML integer out of range: {value}")


def aml_string(text):
    return bytes([STRING_PREFIX]) + text.encode("ascii") + b"\0"


def aml_name_decl(path, data):
    """Name(path, data)."""
    return bytes([NAME_OP]) + aml_name(path) + data


def aml_package(elements):
    """Package() { elements }: each element already encoded."""
    body = bytes([len(elements)]) + b"".join(elements)
    return bytes([PACKAGE_OP]) + aml_pkg_length(len(body)) + body


def aml_scope(path, terms):
    body = aml_name(path) + b"".join(terms)
    return bytes([SCOPE_OP]) + aml_pkg_length(len(body)) + body


def aml_device(name, terms):
    body = aml_name(name) + b"".join(terms)
    return bytes([EXT_OP_PREFIX, DEVICE_OP]) + aml_pkg_length(len(body)) + body


def aml_buffer(data):
    """Buffer() { data }."""
    body = aml_integer(len(data)) + data
    return bytes([BUFFER_OP]) + aml_pkg_length(len(body)) + body


# Resource descriptors (ACPI 6.3, 6.4): large items, then the end tag.
MEMORY32_FIXED, EXTENDED_INTERRUPT, END_TAG = 0x86, 0x89, 0x79
READ_WRITE = 1
INTERRUPT_CONSUMER = 1          # flags: consumer; level, active-high, exclusive (bits clear)


def resource_template(descriptors):
    """ResourceTemplate() { descriptors }: a buffer ending in an End Tag (checksum 0)."""
    return aml_buffer(b"".join(descriptors) + bytes([END_TAG, 0]))


def memory32_fixed(base, length, writable=True):
    return struct.pack("<BHBII", MEMORY32_FIXED, 9, READ_WRITE if writable else 0, base, length)


def level_interrupt(irq):
    """Interrupt (ResourceConsumer, Level, ActiveHigh, Exclusive) {irq}."""
    return struct.pack("<BHBBI", EXTENDED_INTERRUPT, 6, INTERRUPT_CONSUMER, 1, irq)


def virtio_mmio_device(uid, base, size, irq):
    """A virtio-mmio transport as QEMU's microvm declares one: VRnn, LNRO0005."""
    return aml_device(f"VR{uid:02d}", [
        aml_name_decl("_HID", aml_string("LNRO0005")),
        aml_name_decl("_UID", aml_integer(uid)),
        aml_name_decl("_CCA", aml_integer(1)),        # cache-coherent DMA
        aml_name_decl("_CRS", resource_template([memory32_fixed(base, size), level_interrupt(irq)])),
    ])


def sleep_package(slp_typ):
    # PM1a and PM1b SLP_TYP (there is no PM1b block), then two reserved values.
    return aml_package([aml_integer(slp_typ), aml_integer(slp_typ),
                        aml_integer(0), aml_integer(0)])


def dsdt(cpus, pm, virtio=()):
    """DSDT revision 2 (64-bit integers): sleep states, one processor device
    per CPU and one device per virtio-mmio transport, `virtio` being
    (uid, base, size, irq) tuples."""
    if cpus > 0x1000:
        raise ValueError(f"{cpus} CPUs do not fit the DSDT's Cxxx device names")
    processors = [aml_device(f"C{uid:03X}", [aml_name_decl("_HID", aml_string("ACPI0007")),
                                             aml_name_decl("_UID", aml_integer(uid))])
                  for uid in range(cpus)]
    transports = [virtio_mmio_device(*entry) for entry in virtio]
    # Top-level names need no root prefix: the DSDT's scope is the root (iasl drops it too).
    body = (aml_scope("_SB_", processors + transports)
            + aml_name_decl("_S3_", sleep_package(pm.slp_typ_s3))
            + aml_name_decl("_S5_", sleep_package(pm.slp_typ_s5)))
    return sdt(b"DSDT", 2, body)


def build_acpi_tables(base_addr, cpus, pm=DEFAULT_PM, apic_ids=None, *,
                      irq0_pin=PC_TIMER_PIN, boot_arch=BOOT_ARCH, virtio=()):
    """(bytes to write at base_addr, guest address of the RSDP).

    `pm` gives the PM register ports and sleep values (PmRegisters);
    `apic_ids` each CPU's APIC ID (CPU 0 boots); `irq0_pin` the IOAPIC pin
    of the PIT's IRQ 0, as in build_mptable; `boot_arch` the FADT
    IAPC_BOOT_ARCH flags; `virtio` the virtio-mmio transports for the DSDT
    ((uid, base, size, irq) tuples). Raises ValueError if the tables would cross 1 MiB
    from inside the BIOS area, or leave the 32-bit address space.
    """
    ids = cpu_apic_ids(cpus, apic_ids)
    if base_addr % 16:
        raise ValueError(f"RSDP at {base_addr:#x} is not 16-byte aligned")
    madt_table = madt(ids, pm.sci_irq, irq0_pin)
    dsdt_table = dsdt(cpus, pm, virtio)
    system_tables = 2                      # FADT and MADT, in the RSDT and XSDT

    # Addresses in order: RSDP, FACS (facs_address), XSDT, RSDT, FADT, MADT, DSDT.
    cursor = base_addr
    addresses = {}
    for name, size, alignment in (("RSDP", RSDP_SIZE, 16), ("FACS", FACS_SIZE, 64),
                                  ("XSDT", HEADER_SIZE + 8 * system_tables, 16),
                                  ("RSDT", HEADER_SIZE + 4 * system_tables, 16),
                                  ("FACP", FADT_SIZE, 16), ("APIC", len(madt_table), 16),
                                  ("DSDT", len(dsdt_table), 16)):
        addresses[name] = align(cursor, alignment)
        cursor = addresses[name] + size
    end = cursor
    if base_addr < layout.BIOS_AREA_END < end:
        raise ValueError(f"ACPI tables for {cpus} CPUs run from {base_addr:#x} to {end:#x}, "
                         f"past the BIOS area's end at {layout.BIOS_AREA_END:#x}")
    if end > 1 << 32:
        raise ValueError(f"ACPI tables at {base_addr:#x} must lie below 4 GiB (32-bit RSDT)")

    system = (addresses["FACP"], addresses["APIC"])
    tables = {
        "RSDP": rsdp(addresses["RSDT"], addresses["XSDT"]),
        "FACS": facs(),
        "XSDT": sdt(b"XSDT", 1, struct.pack(f"<{len(system)}Q", *system)),
        "RSDT": sdt(b"RSDT", 1, struct.pack(f"<{len(system)}I", *system)),
        "FACP": fadt(addresses["FACS"], addresses["DSDT"], pm, boot_arch),
        "APIC": madt_table,
        "DSDT": dsdt_table,
    }
    blob = bytearray(end - base_addr)
    for name, table in tables.items():
        offset = addresses[name] - base_addr
        blob[offset:offset + len(table)] = table
    return bytes(blob), addresses["RSDP"]
