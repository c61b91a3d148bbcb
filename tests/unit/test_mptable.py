"""The MP table, read back the way a guest does: scan for "_MP_", follow the
pointer, walk the entries (Intel MultiProcessor Specification 1.4, chapter 4)."""

import struct

import pytest
from hypothesis import given, strategies as st

from pyvmm.arch.x86_64 import layout
from pyvmm.arch.x86_64.mptable import build_mptable, max_cpus_below_640k, mptable_size

ENTRY_SIZES = {0: 20, 1: 8, 2: 8, 3: 8, 4: 8}


def find_floating_pointer(blob, base):
    """Guest address of the first valid "_MP_" structure on a 16-byte boundary."""
    for offset in range(0, len(blob) - 15, 16):
        candidate = blob[offset:offset + 16]
        if candidate[:4] == b"_MP_" and sum(candidate) % 256 == 0:
            return base + offset
    raise AssertionError("no MP floating pointer")


def parse(blob, base):
    """(floating pointer fields, header fields, [(type, raw entry)])."""
    pointer_addr = find_floating_pointer(blob, base)
    pointer = blob[pointer_addr - base:pointer_addr - base + 16]
    signature, physptr, length, spec, _checksum, feature1, feature2 = struct.unpack_from(
        "<4sIBBBBB", pointer)
    header_off = physptr - base
    header = struct.unpack_from("<4sHBB8s12sIHHIHBx", blob, header_off)
    table_length = header[1]
    table = blob[header_off:header_off + table_length]
    assert sum(table) % 256 == 0
    entries, offset = [], 44
    while offset < table_length:
        kind = table[offset]
        entries.append((kind, table[offset:offset + ENTRY_SIZES[kind]]))
        offset += ENTRY_SIZES[kind]
    assert offset == table_length
    return ((signature, physptr, length, spec, feature1, feature2), header, entries)


def of_type(entries, kind):
    return [raw for entry_kind, raw in entries if entry_kind == kind]


@given(cpus=st.integers(1, 40))
def test_table_is_found_checksummed_and_counts_its_entries(cpus):
    blob = build_mptable(layout.MPTABLE, cpus)
    assert len(blob) == mptable_size(cpus)
    assert layout.MPTABLE + len(blob) <= layout.BIOS_AREA_END
    (signature, physptr, length, spec, feature1, feature2), header, entries = parse(blob, layout.MPTABLE)
    assert (length, spec, feature1, feature2) == (1, 4, 0, 0)
    assert layout.MPTABLE <= physptr < layout.MPTABLE + len(blob)
    pcmp, table_length, spec_rev, _, oem, product, oem_ptr, oem_size, count, lapic, ext_len, _ = header
    assert (pcmp, spec_rev, lapic) == (b"PCMP", 4, 0xFEE00000)
    assert (oem, product) == (b"PYVMM   ", b"PYVMM       ")
    assert (oem_ptr, oem_size, ext_len) == (0, 0, 0)
    assert count == len(entries)
    assert physptr + table_length == layout.MPTABLE + len(blob)
    # The specification orders entries by type.
    kinds = [kind for kind, _ in entries]
    assert kinds == sorted(kinds)
    assert len(of_type(entries, 0)) == cpus


@given(cpus=st.integers(1, 40))
def test_processor_entries(cpus):
    _, _, entries = parse(build_mptable(layout.MPTABLE, cpus), layout.MPTABLE)
    processors = [struct.unpack("<BBBBII8x", raw) for raw in of_type(entries, 0)]
    assert [apic_id for _, apic_id, *_ in processors] == list(range(cpus))
    for index, (_, _, version, flags, signature, features) in enumerate(processors):
        assert version == 0x14
        assert flags == (3 if index == 0 else 1)        # enabled, BSP only on CPU 0
        assert (signature, features) == (0x600, 0x201)


def test_bus_ioapic_and_interrupt_wiring():
    _, _, entries = parse(build_mptable(layout.MPTABLE, 4), layout.MPTABLE)
    assert of_type(entries, 1) == [struct.pack("<BB6s", 1, 0, b"ISA   ")]
    (ioapic,) = of_type(entries, 2)
    _, ioapic_id, version, flags, address = struct.unpack("<BBBBI", ioapic)
    assert (ioapic_id, version, flags, address) == (4, 0x11, 1, 0xFEC00000)

    routes = {}
    for raw in of_type(entries, 3):
        _, irq_type, flags, bus, irq, dest, pin = struct.unpack("<BBHBBBB", raw)
        assert (irq_type, flags, bus, dest) == (0, 0, 0, ioapic_id)   # INT, conforming, ISA
        routes[irq] = pin
    # IRQ 0 on pin 2 as on PCs; IRQ 2 (the cascade) has no entry; the rest are identity.
    assert routes == {0: 2, **{irq: irq for irq in range(1, 16) if irq != 2}}

    local = [struct.unpack("<BBHBBBB", raw) for raw in of_type(entries, 4)]
    assert [(irq_type, dest, lint) for _, irq_type, _, _, _, dest, lint in local] == [
        (3, 0, 0),      # ExtINT -> BSP LINT0
        (1, 0xFF, 1),   # NMI -> all LINT1
    ]


def test_identity_timer_wiring_when_irq0_stays_on_pin_0():
    _, _, entries = parse(build_mptable(layout.MPTABLE, 2, irq0_pin=0), layout.MPTABLE)
    pins = {raw[5]: raw[7] for raw in of_type(entries, 3)}
    assert pins == {irq: irq for irq in range(16)}


def test_given_apic_ids_and_cpu_identity():
    blob = build_mptable(layout.MPTABLE, 3, [0, 2, 4], cpu_signature=0x906EA, cpu_features=0xBFEBFBFF)
    _, _, entries = parse(blob, layout.MPTABLE)
    processors = [struct.unpack("<BBBBII8x", raw) for raw in of_type(entries, 0)]
    assert [p[1] for p in processors] == [0, 2, 4]
    assert {(p[4], p[5]) for p in processors} == {(0x906EA, 0xBFEBFBFF)}
    ioapic_id = of_type(entries, 2)[0][1]
    assert ioapic_id not in (0, 2, 4)
    assert of_type(entries, 4)[0][5] == 0        # ExtINT goes to the BSP's APIC ID


def test_forty_cpus_fit_in_the_ebda_and_more_are_refused():
    ebda = 0x9FC00
    assert max_cpus_below_640k(ebda) == max_cpus_below_640k(ebda, 0) == 40
    assert ebda + len(build_mptable(ebda, 40)) <= 0xA0000
    with pytest.raises(ValueError, match="at most 40 CPUs"):
        build_mptable(ebda, 41)


def test_pyvmm_places_the_table_where_254_cpus_fit():
    assert layout.MPTABLE + len(build_mptable(layout.MPTABLE, 254)) <= layout.BIOS_AREA_END


def test_the_bios_area_holds_254_cpus():
    blob = build_mptable(0xF0000, 254)
    _, _, entries = parse(blob, 0xF0000)
    assert len(of_type(entries, 0)) == 254
    assert of_type(entries, 2)[0][1] == 254      # the one 8-bit ID left


@pytest.mark.parametrize("cpus, apic_ids, message", [
    (0, None, "at least one CPU"),
    (2, [0], "2 CPUs"),
    (2, [1, 1], "distinct"),
    (1, [255], "does not fit an MP table"),
])
def test_bad_cpu_descriptions_are_refused(cpus, apic_ids, message):
    with pytest.raises(ValueError, match=message):
        build_mptable(layout.MPTABLE, cpus, apic_ids)


def test_unaligned_base_and_odd_timer_pins_are_refused():
    with pytest.raises(ValueError, match="16-byte"):
        build_mptable(layout.MPTABLE + 8, 1)
    with pytest.raises(ValueError, match="pin 0 or 2"):
        build_mptable(layout.MPTABLE, 1, irq0_pin=5)


def test_cpus_holding_every_8bit_id_leave_none_for_the_ioapic():
    with pytest.raises(ValueError, match="none is left for the IOAPIC"):
        build_mptable(0xF0000, 255)
