"""ACPI tables read back as a guest reads them: scan the BIOS area for the
RSDP, follow RSDT/XSDT to the FADT and MADT, the FADT to the FACS and DSDT,
and decode the DSDT's AML. Offsets are the ACPI 6.3 specification's (chapter 5.2).
"""

import re
import shutil
import struct
import subprocess

import pytest
from hypothesis import given, strategies as st

from pyvmm.arch.x86_64 import acpi, layout
from pyvmm.arch.x86_64.acpi import PmRegisters, build_acpi_tables, facs_address
from pyvmm.devices import acpi_pm

BASES = st.sampled_from([layout.BIOS_AREA, 0xF0000])


class Tables:
    """A blob written at `base`, read through guest addresses."""

    def __init__(self, blob, base):
        self.blob, self.base = blob, base
        self.rsdp_addr = find_rsdp(blob, base)
        self.rsdp = self.read(self.rsdp_addr, 36)
        _, _, _, revision, self.rsdt_addr, length, self.xsdt_addr, _ = struct.unpack(
            "<8sB6sBIIQB3x", self.rsdp)
        assert (revision, length) == (2, 36)
        self.xsdt = self.table(self.xsdt_addr, b"XSDT")
        self.rsdt = self.table(self.rsdt_addr, b"RSDT")
        xsdt_entries = list(struct.unpack_from(f"<{(len(self.xsdt) - 36) // 8}Q", self.xsdt, 36))
        rsdt_entries = list(struct.unpack_from(f"<{(len(self.rsdt) - 36) // 4}I", self.rsdt, 36))
        assert xsdt_entries == rsdt_entries
        self.by_signature = {}
        for addr in xsdt_entries:
            signature = self.read(addr, 4)
            self.by_signature[signature] = (addr, self.table(addr, signature))
        self.fadt_addr, self.fadt = self.by_signature[b"FACP"]
        self.madt_addr, self.madt = self.by_signature[b"APIC"]
        self.facs_addr = field(self.fadt, 36, "I")
        self.facs = self.read(self.facs_addr, 64)
        self.dsdt_addr = field(self.fadt, 40, "I")
        self.dsdt = self.table(self.dsdt_addr, b"DSDT")

    def read(self, addr, size):
        offset = addr - self.base
        assert 0 <= offset and offset + size <= len(self.blob), f"{addr:#x} is outside the tables"
        return self.blob[offset:offset + size]

    def table(self, addr, signature):
        """A checksummed system description table with the project's OEM header."""
        header = self.read(addr, 36)
        assert header[:4] == signature
        length = field(header, 4, "I")
        table = self.read(addr, length)
        assert sum(table) % 256 == 0, f"{signature} checksum"
        assert table[10:16] == b"PYVMM " and table[16:24] == b"PYVMMACP"
        assert table[28:32] == b"PYVM"
        return table


def read_tables(cpus, *args, base=layout.BIOS_AREA, **kwargs):
    blob, _ = build_acpi_tables(base, cpus, *args, **kwargs)
    return Tables(blob, base)


def field(data, offset, fmt):
    return struct.unpack_from("<" + fmt, data, offset)[0]


def find_rsdp(blob, base):
    """What Linux and kvm-unit-tests do: the first "RSD PTR " on a 16-byte boundary."""
    for offset in range(0, len(blob) - 35, 16):
        if blob[offset:offset + 8] == b"RSD PTR ":
            assert sum(blob[offset:offset + 20]) % 256 == 0, "RSDP checksum"
            assert sum(blob[offset:offset + 36]) % 256 == 0, "RSDP extended checksum"
            return base + offset
    raise AssertionError("no RSDP")


def madt_entries(madt):
    entries, offset = [], 44
    while offset < len(madt):
        kind, length = madt[offset], madt[offset + 1]
        assert length >= 2
        entries.append((kind, madt[offset:offset + length]))
        offset += length
    assert offset == len(madt)
    return entries


# --- a tiny AML decoder for the subset the DSDT uses -------------------------
def decode_pkg_length(aml, pos):
    lead = aml[pos]
    extra = lead >> 6
    if extra == 0:
        return lead & 0x3F, pos + 1
    length = lead & 0x0F
    for i in range(extra):
        length |= aml[pos + 1 + i] << (4 + 8 * i)
    return length, pos + 1 + extra


def decode_name(aml, pos):
    prefix = ""
    if aml[pos] == 0x5C:
        prefix, pos = "\\", pos + 1
    if aml[pos] == 0x2E:
        count, pos = 2, pos + 1
    elif aml[pos] == 0x2F:
        count, pos = aml[pos + 1], pos + 2
    else:
        count = 1
    segments = [aml[pos + 4 * i:pos + 4 * i + 4].decode() for i in range(count)]
    return prefix + ".".join(segments), pos + 4 * count


def decode_data(aml, pos):
    op = aml[pos]
    if op in (0x00, 0x01):
        return op, pos + 1
    sizes = {0x0A: "B", 0x0B: "H", 0x0C: "I", 0x0E: "Q"}
    if op in sizes:
        return field(aml, pos + 1, sizes[op]), pos + 1 + struct.calcsize(sizes[op])
    if op == 0x0D:
        end = aml.index(0, pos + 1)
        return aml[pos + 1:end].decode(), end + 1
    if op == 0x11:                                           # BufferOp: its bytes
        length, body = decode_pkg_length(aml, pos + 1)
        end = pos + 1 + length
        size, data = decode_data(aml, body)
        assert data + size == end
        return bytes(aml[data:end]), end
    if op == 0x12:
        length, body = decode_pkg_length(aml, pos + 1)
        end = pos + 1 + length
        count, cursor, elements = aml[body], body + 1, []
        while cursor < end:
            element, cursor = decode_data(aml, cursor)
            elements.append(element)
        assert cursor == end and len(elements) == count
        return elements, end
    raise AssertionError(f"unexpected AML data opcode {op:#x} at {pos}")


def decode_terms(aml, pos=0, end=None):
    """{name: value or nested dict} for Name, Scope and Device terms."""
    end = len(aml) if end is None else end
    namespace = {}
    while pos < end:
        if aml[pos] == 0x08:                                 # NameOp
            name, pos = decode_name(aml, pos + 1)
            namespace[name], pos = decode_data(aml, pos)
        elif aml[pos] == 0x10 or aml[pos:pos + 2] == b"\x5b\x82":   # ScopeOp, DeviceOp
            start = pos + (1 if aml[pos] == 0x10 else 2)
            length, body = decode_pkg_length(aml, start)
            name, body = decode_name(aml, body)
            namespace[name] = decode_terms(aml, body, start + length)
            pos = start + length
        else:
            raise AssertionError(f"unexpected AML opcode {aml[pos]:#x} at {pos}")
    assert pos == end
    return namespace


# --- layout -------------------------------------------------------------------
@given(cpus=st.integers(1, 64), base=BASES)
def test_a_guest_finds_every_table_by_scanning(cpus, base):
    blob, rsdp_addr = build_acpi_tables(base, cpus)
    tables = Tables(blob, base)
    assert tables.rsdp_addr == rsdp_addr == base
    assert sorted(tables.by_signature) == [b"APIC", b"FACP"]
    assert base + len(blob) <= layout.BIOS_AREA_END
    spans = sorted([(tables.rsdp_addr, 36), (tables.facs_addr, 64)]
                   + [(addr, field(tables.read(addr, 8), 4, "I"))
                      for addr in (tables.xsdt_addr, tables.rsdt_addr, tables.fadt_addr,
                                   tables.madt_addr, tables.dsdt_addr)])
    for (start, size), (next_start, _) in zip(spans, spans[1:]):
        assert start + size <= next_start, "tables overlap"


def test_revisions_and_facs():
    tables = read_tables(2)
    assert [table[8] for table in (tables.xsdt, tables.rsdt, tables.fadt, tables.madt, tables.dsdt)] == [
        1, 1, 6, 5, 2]
    assert tables.facs_addr % 64 == 0
    signature, length, hw_signature, waking, lock, flags, x_waking, version = struct.unpack_from(
        "<4sIIIIIQB", tables.facs)
    assert (signature, length, version) == (b"FACS", 64, 2)
    assert (hw_signature, waking, lock, flags, x_waking) == (0, 0, 0, 0, 0)


@given(cpus=st.integers(1, 254), base=st.integers(0xE000, 0xF800).map(lambda page: page * 16))
def test_facs_address_is_where_the_fadt_points(cpus, base):
    blob, rsdp_addr = build_acpi_tables(base, cpus)
    rsdt, = struct.unpack_from("<I", blob, rsdp_addr - base + 16)
    fadt, = struct.unpack_from("<I", blob, rsdt - base + 36)
    firmware_ctrl, = struct.unpack_from("<I", blob, fadt - base + 36)
    assert facs_address(base) == firmware_ctrl
    assert blob[firmware_ctrl - base:][:4] == b"FACS"


def facs_with(vector=0, x_vector=0, version=2, length=64, signature=b"FACS"):
    table = bytearray(acpi.facs())
    struct.pack_into("<4sI", table, 0, signature, length)
    struct.pack_into("<I", table, 12, vector)
    struct.pack_into("<Q", table, 24, x_vector)
    table[32] = version
    return bytes(table)


@pytest.mark.parametrize("table, expected", [
    (acpi.facs(), None),                                          # as built: no vector
    (facs_with(vector=0x30008), ("real", 0x30008)),
    (facs_with(vector=0x9A000, x_vector=0x100000), ("protected", 0x100000)),   # X_ wins
    (facs_with(vector=0x9A000, x_vector=0x100000, version=0), ("real", 0x9A000)),  # v0: no X_
    (facs_with(vector=0x9A000, x_vector=0x100000, length=32), ("real", 0x9A000)),  # too short
    (facs_with(vector=0x9A000, x_vector=1 << 32), ("real", 0x9A000)),            # beyond 32 bits
    (facs_with(x_vector=0xFFFFFFFF), ("protected", 0xFFFFFFFF)),
    (facs_with(vector=0x30008, signature=b"FACT"), None),         # overwritten: firmware reboots
    (facs_with(vector=0x30008)[:32], None),
])
def test_waking_vector(table, expected):
    assert acpi.waking_vector(table) == expected


@given(st.binary(max_size=80))
def test_waking_vector_takes_any_bytes(table):
    vector = acpi.waking_vector(table)
    assert vector is None or (vector.mode in ("real", "protected") and 0 < vector.address < 1 << 32)


def test_the_rsdp_sits_where_kvm_unit_tests_look_when_placed_at_0xf0000():
    blob, rsdp_addr = build_acpi_tables(0xF0000, 1)
    assert 0xF0000 <= rsdp_addr < 0x100000 and rsdp_addr % 16 == 0


# --- FADT -------------------------------------------------------------------------
def gas(fadt, offset):
    return struct.unpack_from("<BBBBQ", fadt, offset)


def test_fadt_fields_at_their_spec_offsets():
    pm = PmRegisters(pm1_evt=0xB000, pm1_cnt=0xB004, pm_tmr=0xB008, reset_port=0xB00C,
                     reset_value=0x0E, sci_irq=10, timer_32bit=True)
    tables = read_tables(2, pm)
    fadt = tables.fadt
    assert len(fadt) == field(fadt, 4, "I") == 276
    assert field(fadt, 36, "I") == tables.facs_addr                    # FIRMWARE_CTRL
    assert field(fadt, 132, "Q") == 0                                  # X_FIRMWARE_CTRL: only one may be set
    assert field(fadt, 40, "I") == field(fadt, 140, "Q") == tables.dsdt_addr   # DSDT, X_DSDT
    assert field(fadt, 46, "H") == 10                                  # SCI_INT
    assert field(fadt, 48, "I") == 0                                   # SMI_CMD: always in ACPI mode
    assert fadt[52:56] == bytes(4)                                     # ACPI_ENABLE/DISABLE, S4BIOS, PSTATE
    assert field(fadt, 56, "I") == 0xB000                              # PM1a_EVT_BLK
    assert field(fadt, 60, "I") == 0                                   # PM1b_EVT_BLK
    assert field(fadt, 64, "I") == 0xB004                              # PM1a_CNT_BLK
    assert field(fadt, 76, "I") == 0xB008                              # PM_TMR_BLK
    assert field(fadt, 80, "I") == 0                                   # GPE0_BLK
    assert tuple(fadt[88:92]) == (4, 2, 0, 4)                          # PM1_EVT/PM1_CNT/PM2_CNT/PM_TMR_LEN
    assert field(fadt, 96, "H") > 100 and field(fadt, 98, "H") > 1000  # no C2, no C3
    assert fadt[108] == 0x32                                           # CENTURY: CMOS index
    assert field(fadt, 109, "H") == 0x3                                # IAPC_BOOT_ARCH: legacy + 8042
    flags = field(fadt, 112, "I")
    assert flags & (1 << 10)                                           # RESET_REG_SUP
    assert flags & (1 << 8)                                            # TMR_VAL_EXT
    assert not flags & (1 << 20)                                       # not HW_REDUCED_ACPI
    assert not flags & (1 << 6)       # FIX_RTC clear: the RTC wake status is in PM1 (S3 wake)
    assert gas(fadt, 116) == (1, 8, 0, 1, 0xB00C)                      # RESET_REG: I/O, byte
    assert fadt[128] == 0x0E                                           # RESET_VALUE
    assert fadt[131] == 3                                              # FADT minor version: 6.3
    assert gas(fadt, 148) == (1, 32, 0, 2, 0xB000)                     # X_PM1a_EVT_BLK
    assert gas(fadt, 172) == (1, 16, 0, 2, 0xB004)                     # X_PM1a_CNT_BLK
    assert gas(fadt, 208) == (1, 32, 0, 3, 0xB008)                     # X_PM_TMR_BLK
    for unused in (160, 184, 196, 220, 232, 244, 256):
        assert gas(fadt, unused) == (0, 0, 0, 0, 0)
    assert fadt[268:276] == b"PYVMMKVM"


def test_fadt_defaults_point_at_the_pm_device():
    fadt = read_tables(1).fadt
    assert (field(fadt, 56, "I"), field(fadt, 64, "I"), field(fadt, 76, "I")) == (
        layout.ACPI_PM.base + acpi_pm.EVT_OFFSET, layout.ACPI_PM.base + acpi_pm.CNT_OFFSET,
        layout.ACPI_PM.base + acpi_pm.TMR_OFFSET)
    assert tuple(fadt[88:92]) == (acpi_pm.PM1_EVT_LEN, acpi_pm.PM1_CNT_LEN, 0, acpi_pm.PM_TMR_LEN)
    assert field(fadt, 46, "H") == layout.SCI_IRQ
    assert gas(fadt, 116) == (1, 8, 0, 1, layout.ACPI_RESET_PORT)
    assert fadt[128] == acpi_pm.RESET_VALUE
    assert bool(field(fadt, 112, "I") & (1 << 8)) == (acpi_pm.PM_TMR_BITS == 32)   # TMR_VAL_EXT


# --- MADT ---------------------------------------------------------------------------
@given(cpus=st.integers(1, 254))
def test_madt_describes_every_cpu_one_ioapic_and_isa_overrides(cpus):
    madt = read_tables(cpus).madt
    assert struct.unpack_from("<II", madt, 36) == (0xFEE00000, 1)     # LAPIC address, PCAT_COMPAT
    entries = madt_entries(madt)
    lapics = [struct.unpack("<BBBBI", raw) for kind, raw in entries if kind == 0]
    assert [(uid, apic_id, flags) for _, _, uid, apic_id, flags in lapics] == [
        (i, i, 1) for i in range(cpus)]
    ioapics = [struct.unpack("<BBBBII", raw) for kind, raw in entries if kind == 1]
    assert [(ioapic_id, address, gsi_base) for _, _, ioapic_id, _, address, gsi_base in ioapics] == [
        (cpus, 0xFEC00000, 0)]
    overrides = [struct.unpack("<BBBBIH", raw)[2:] for kind, raw in entries if kind == 2]
    assert overrides == [(0, 0, 2, 0), (0, 9, 9, 0x000D)]             # IRQ0 -> GSI 2; SCI level, high
    nmis = [struct.unpack("<BBBHB", raw)[2:] for kind, raw in entries if kind == 4]
    assert nmis == [(0xFF, 0, 1)]                                      # all processors, LINT1
    assert {kind for kind, _ in entries} == {0, 1, 2, 4}


def test_madt_without_timer_override_when_irq0_stays_on_pin_0():
    madt = read_tables(2, irq0_pin=0).madt
    overrides = [raw[3] for kind, raw in madt_entries(madt) if kind == 2]
    assert overrides == [9]


def test_x2apic_ids_get_x2apic_entries():
    ids = [0, 1, 300, 301]
    tables = read_tables(4, apic_ids=ids)
    entries = madt_entries(tables.madt)
    xapic = [(raw[2], raw[3]) for kind, raw in entries if kind == 0]
    x2apic = [struct.unpack("<BBHIII", raw) for kind, raw in entries if kind == 9]
    assert xapic == [(0, 0), (1, 1)]
    assert [(uid, apic_id, flags) for _, length, _, apic_id, flags, uid in x2apic] == [
        (2, 300, 1), (3, 301, 1)]
    x2nmi = [struct.unpack("<BBHIB3x", raw) for kind, raw in entries if kind == 10]
    assert [(uid, lint) for _, length, _, uid, lint in x2nmi] == [(0xFFFFFFFF, 1)]
    ioapic_id = [raw[2] for kind, raw in entries if kind == 1][0]
    assert ioapic_id == 2                                              # the lowest 8-bit ID no CPU has


# --- DSDT ---------------------------------------------------------------------------
def test_dsdt_declares_sleep_states_and_processors():
    pm = PmRegisters(slp_typ_s5=5, slp_typ_s3=3)
    dsdt = read_tables(3, pm).dsdt
    namespace = decode_terms(dsdt[36:])
    assert namespace["_S5_"] == [5, 5, 0, 0]
    assert namespace["_S3_"] == [3, 3, 0, 0]
    assert namespace["_SB_"] == {f"C00{i}": {"_HID": "ACPI0007", "_UID": i} for i in range(3)}


def test_dsdt_default_sleep_types_are_the_pm_devices():
    namespace = decode_terms(read_tables(1).dsdt[36:])
    assert namespace["_S5_"] == [acpi_pm.SLP_TYP_S5] * 2 + [0, 0]
    assert namespace["_S3_"] == [acpi_pm.SLP_TYP_S3] * 2 + [0, 0]


@given(cpus=st.integers(1, 300))
def test_dsdt_processor_uids_match_the_madt(cpus):
    ids = list(range(cpus))
    tables = read_tables(cpus, apic_ids=ids)
    devices = decode_terms(tables.dsdt[36:])["_SB_"]
    uids = sorted(device["_UID"] for device in devices.values())
    madt_uids = sorted(raw[2] if kind == 0 else field(raw, 12, "I")
                       for kind, raw in madt_entries(tables.madt) if kind in (0, 9))
    assert uids == madt_uids == list(range(cpus))


VIRTIO = [(23, 0xFEB02E00, 0x200, 23), (22, 0xFEB02C00, 0x200, 22)]


def test_dsdt_declares_virtio_mmio_transports_as_qemu_microvm_does():
    devices = decode_terms(read_tables(2, virtio=VIRTIO).dsdt[36:])["_SB_"]
    for uid, base, size, irq in VIRTIO:
        device = devices[f"VR{uid}"]
        assert {key: device[key] for key in ("_HID", "_UID", "_CCA")} == {
            "_HID": "LNRO0005", "_UID": uid, "_CCA": 1}
        crs = device["_CRS"]
        # Memory32Fixed (ReadWrite, base, size); Interrupt (Consumer, Level, ActiveHigh,
        # Exclusive) {irq}; End Tag.
        assert struct.unpack("<BHBII", crs[:12]) == (0x86, 9, 1, base, size)
        assert struct.unpack("<BHBBI", crs[12:21]) == (0x89, 6, 0x01, 1, irq)
        assert crs[21:] == b"\x79\x00"
    assert "C000" in devices and "C001" in devices


def test_aml_encodings_match_the_spec():
    assert acpi.aml_pkg_length(0x3E) == bytes([0x3F])                 # one byte up to 63
    assert acpi.aml_pkg_length(0x3F) == bytes([0x41, 0x04])           # 0x41: 1 extra byte, 0x41 total
    assert acpi.aml_pkg_length(0xFFD) == bytes([0x4F, 0xFF])          # 0xFFF total: 1 extra byte
    assert acpi.aml_pkg_length(0x1000) == bytes([0x83, 0x00, 0x01])   # 0x1003 total: 2 extra bytes
    for body in (0, 0x3E, 0x3F, 0xFFD, 0xFFE, 0x10000, 0xFFFFD):
        encoded = acpi.aml_pkg_length(body)
        assert decode_pkg_length(encoded, 0) == (body + len(encoded), len(encoded))
    assert acpi.aml_name("_S5") == b"_S5_"
    assert acpi.aml_name("\\_S5_") == b"\\_S5_"
    assert acpi.aml_name("_SB_.C000") == b"\x2e_SB_C000"
    assert acpi.aml_name("\\_SB_.PCI0.ISA_") == b"\\\x2f\x03_SB_PCI0ISA_"
    assert [acpi.aml_integer(v) for v in (0, 1, 2, 0x100, 0x10000, 1 << 32)] == [
        b"\x00", b"\x01", b"\x0a\x02", b"\x0b\x00\x01", b"\x0c\x00\x00\x01\x00",
        b"\x0e\x00\x00\x00\x00\x01\x00\x00\x00"]
    assert acpi.aml_name_decl("_S5_", acpi.aml_package([b"\x00"] * 4)) == bytes.fromhex(
        "085f53355f12060400000000")


# --- refusals -----------------------------------------------------------------------
def test_tables_that_would_cross_1mib_are_refused():
    with pytest.raises(ValueError, match="past the BIOS area"):
        build_acpi_tables(layout.BIOS_AREA_END - 0x100, 4)


def test_unaligned_rsdp_is_refused():
    with pytest.raises(ValueError, match="16-byte"):
        build_acpi_tables(layout.BIOS_AREA + 4, 1)


# --- iasl, the ACPICA compiler/disassembler, as an independent reader ---------------
def iasl(tmp_path, *args):
    result = subprocess.run(["iasl", *args], cwd=tmp_path, capture_output=True, text=True,
                            timeout=60)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert not re.search(r"\b[1-9]\d* (Errors|Warnings)", output), output
    return output


@pytest.mark.skipif(shutil.which("iasl") is None,
                    reason="iasl is not installed (apt-get install acpica-tools)")
@pytest.mark.parametrize("apic_ids, virtio", [(None, ()), ([0, 1, 300, 301], ()), (None, VIRTIO)])
def test_iasl_disassembles_and_reassembles_every_table(tmp_path, apic_ids, virtio):
    tables = read_tables(4, apic_ids=apic_ids, virtio=virtio)
    named = {"xsdt": tables.xsdt, "rsdt": tables.rsdt, "facp": tables.fadt,
             "apic": tables.madt, "facs": tables.facs, "dsdt": tables.dsdt}
    # (iasl cannot read a bare RSDP binary: its header has no length at offset 4.)
    for name, table in named.items():
        (tmp_path / f"{name}.dat").write_bytes(table)
        iasl(tmp_path, "-d", f"{name}.dat")
        iasl(tmp_path, "-p", f"re_{name}", f"{name}.dsl")
        rebuilt = (tmp_path / f"re_{name}.aml").read_bytes()
        if name == "dsdt" and virtio:
            source = (tmp_path / "dsdt.dsl").read_text()
            for uid, base, size, irq in virtio:
                assert f"Device (VR{uid})" in source
                assert re.search(rf"Memory32Fixed \(ReadWrite,\s*0x{base:08X},[^\n]*\n\s*0x{size:08X},", source)
            assert source.count("Interrupt (ResourceConsumer, Level, ActiveHigh, Exclusive") == len(virtio)
        if name == "facs":
            assert rebuilt == table
        else:
            # iasl stamps its own creator ID and revision (and so a new checksum).
            assert rebuilt[:9] + rebuilt[10:28] + rebuilt[36:] == table[:9] + table[10:28] + table[36:], name


@pytest.mark.skipif(shutil.which("acpiexec") is None,
                    reason="acpiexec is not installed (apt-get install acpica-tools)")
def test_acpica_loads_the_tables_without_firmware_warnings(tmp_path):
    # acpiexec runs ACPICA, the interpreter inside Linux: its FADT parser warns
    # about 32/64-bit mismatches and bad register lengths the way a guest would.
    tables = read_tables(4, virtio=VIRTIO)
    for name, table in {"facp": tables.fadt, "dsdt": tables.dsdt, "apic": tables.madt}.items():
        (tmp_path / f"{name}.dat").write_bytes(table)
    result = subprocess.run(["acpiexec", "-b", "evaluate _S5_; evaluate _SB_.C003._UID; "
                             "evaluate _SB_.VR23._CRS",
                             "facp.dat", "dsdt.dat", "apic.dat"],
                            cwd=tmp_path, capture_output=True, text=True, timeout=60)
    # acpiexec's own GPE self-tests (aetests) complain that the FADT has no GPE block.
    lines = [line for line in (result.stdout + result.stderr).splitlines() if "aetests" not in line]
    output = "\n".join(lines)
    assert result.returncode == 0, output
    assert not re.search(r"warning|error", output, re.IGNORECASE), output
    assert "Evaluation of \\_S5_ returned" in output and "[Package] Contains 4 Elements" in output
    assert "[Integer] = 0000000000000003" in output
    assert "Evaluation of \\_SB_.VR23._CRS returned" in output and "86 09 00 01 00 2E B0 FE 00 02 00 00 89 06 00 01" in output
