"""CPUID tables: per-vCPU APIC IDs and topology, and consistent feature masking."""

import pytest
from hypothesis import given, strategies as st

from pyvmm.arch.x86_64 import cpuid

# A host-like supported set: leaf 1 with XSAVE/AVX/x2APIC/CX16, leaf 7 with
# AVX2, the XSAVE leaf, a topology leaf and the KVM signature leaf.
SUPPORTED = [
    {"function": 0x0, "index": 0, "flags": 0, "eax": 0xD, "ebx": 0, "ecx": 0, "edx": 0},
    {"function": 0x1, "index": 0, "flags": 0, "eax": 0xA00F11, "ebx": 0x800,
     "ecx": (1 << 26) | (1 << 28) | (1 << 21) | (1 << 13) | (1 << 12) | (1 << 29), "edx": 1 << 25 | 1 << 26},
    {"function": 0x7, "index": 0, "flags": 1, "eax": 0, "ebx": 1 << 5 | 1 << 16, "ecx": 0, "edx": 0},
    {"function": 0xB, "index": 0, "flags": 1, "eax": 0, "ebx": 0, "ecx": 0, "edx": 0},
    {"function": 0xD, "index": 0, "flags": 1, "eax": 0x7, "ebx": 0x340, "ecx": 0x340, "edx": 0},
    {"function": 0xD, "index": 1, "flags": 1, "eax": 0xF, "ebx": 0, "ecx": 0, "edx": 0},
    {"function": 0x40000000, "index": 0, "flags": 0, "eax": 0x40000001, "ebx": 0x4B4D564B,
     "ecx": 0x564B4D56, "edx": 0x4D},
]


def leaf(entries, function, index=0):
    return next(e for e in entries if e["function"] == function and e["index"] == index)


@given(cpus=st.integers(1, 255), data=st.data())
def test_each_vcpu_sees_its_own_apic_id_and_the_topology(cpus, data):
    apic_id = data.draw(st.integers(0, cpus - 1))
    entries = cpuid.vcpu_cpuid(SUPPORTED, apic_id, cpus)
    assert leaf(entries, 1)["ebx"] >> 24 == apic_id
    assert leaf(entries, 1)["ebx"] >> 16 & 0xFF == cpus & 0xFF
    smt, core, end = (leaf(entries, 0xB, i) for i in range(3))
    assert all(e["edx"] == apic_id for e in (smt, core, end))
    assert (smt["ebx"], smt["ecx"] >> 8) == (1, 1)
    assert (core["ebx"], core["ecx"] >> 8) == (cpus, 2)
    assert 1 << core["eax"] >= cpus and (core["eax"] == 0 or 1 << (core["eax"] - 1) < cpus)
    assert end["ecx"] >> 8 == 0
    # Everything else passes through unchanged, the KVM signature leaf included.
    assert leaf(entries, 0x40000000) == SUPPORTED[-1]
    assert SUPPORTED[1]["ebx"] == 0x800     # the input is not modified


def test_masking_xsave_hides_everything_built_on_it():
    masked = cpuid.parse_feature_mask("-xsave")
    assert {"xsave", "osxsave", "avx", "avx2", "fma", "f16c", "avx512f", "xsaveopt"} <= masked
    entries = cpuid.vcpu_cpuid(SUPPORTED, 0, 1, masked)
    for name in ("xsave", "avx", "avx2", "fma", "f16c", "avx512f", "xsaveopt", "xsaves"):
        assert not cpuid.has_feature(entries, name), name
    assert all(e["eax"] == e["ebx"] == e["ecx"] == e["edx"] == 0
               for e in entries if e["function"] == 0xD)
    assert cpuid.has_feature(entries, "cx16") and cpuid.has_feature(entries, "x2apic")
    assert cpuid.boot_xcr0(entries) == cpuid.XCR0_X87


def test_masking_avx_keeps_xsave_and_drops_avx_state_from_xcr0():
    entries = cpuid.vcpu_cpuid(SUPPORTED, 0, 1, cpuid.parse_feature_mask("-avx"))
    assert cpuid.has_feature(entries, "xsave")
    assert not cpuid.has_feature(entries, "avx2")
    assert leaf(entries, 0xD)["eax"] & cpuid.XCR0_AVX == 0
    assert cpuid.boot_xcr0(entries) == cpuid.XCR0_X87 | cpuid.XCR0_SSE


def test_unmasked_xcr0_enables_what_the_cpu_has():
    entries = cpuid.vcpu_cpuid(SUPPORTED, 0, 1)
    assert cpuid.boot_xcr0(entries) == cpuid.XCR0_X87 | cpuid.XCR0_SSE | cpuid.XCR0_AVX


@given(names=st.sets(st.sampled_from(sorted(cpuid.FEATURES)), max_size=6))
def test_any_mask_clears_exactly_the_closed_set(names):
    text = ",".join(f"-{name}" for name in names)
    masked = cpuid.parse_feature_mask(text)
    assert masked == cpuid.close_over_dependents(names)
    entries = cpuid.vcpu_cpuid(SUPPORTED, 0, 2, masked)
    for name in masked:
        assert not cpuid.has_feature(entries, name)


@pytest.mark.parametrize("text, message", [("xsave", "only masking"), ("-nosuch", "unknown CPU feature")])
def test_bad_masks_are_refused(text, message):
    with pytest.raises(cpuid.CpuFeatureError, match=message):
        cpuid.parse_feature_mask(text)


def test_every_vcpu_is_told_it_runs_under_a_hypervisor():
    # KVM_GET_SUPPORTED_CPUID leaves CPUID.1:ECX[31] clear; without it Linux
    # never reads the KVM leaves (no KVM clock: its clock reads then exit).
    assert not SUPPORTED[1]["ecx"] >> 31 & 1
    for apic_id, cpus in ((0, 1), (1, 2)):
        assert cpuid.has_feature(cpuid.vcpu_cpuid(SUPPORTED, apic_id, cpus), "hypervisor")
    assert not cpuid.has_feature(cpuid.vcpu_cpuid(SUPPORTED, 0, 1, {"hypervisor"}), "hypervisor")


def test_kvm_features_come_from_the_kvm_features_leaf():
    assert cpuid.kvm_features(SUPPORTED) == 0
    features = {"function": 0x40000001, "index": 0, "flags": 0, "eax": 0x1007EFB, "ebx": 0, "ecx": 0, "edx": 0}
    assert cpuid.kvm_features(SUPPORTED + [features]) == 0x1007EFB
