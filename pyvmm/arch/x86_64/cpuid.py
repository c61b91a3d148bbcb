"""The CPUID table each vCPU sees: KVM's supported set, per-vCPU topology and
APIC IDs, and features the user masked (`--cpu-features=-xsave,-cx16`).

Masking a feature also masks every feature that cannot work without it
(AVX without XSAVE, ...), and the XSAVE leaf 0xD follows, so the CPUID
leaves and XCR0 stay consistent (like QEMU's `-cpu host,-feature`).
"""

LEAF_FEATURES = 0x1
LEAF_STRUCTURED = 0x7
LEAF_TOPOLOGY = 0xB
LEAF_XSAVE = 0xD
LEAF_V2_TOPOLOGY = 0x1F
LEAF_EXTENDED = 0x80000001

# name: (leaf, subleaf, register, bit)
FEATURES = {
    "fpu": (LEAF_FEATURES, 0, "edx", 0),
    "tsc": (LEAF_FEATURES, 0, "edx", 4),
    "msr": (LEAF_FEATURES, 0, "edx", 5),
    "pae": (LEAF_FEATURES, 0, "edx", 6),
    "cx8": (LEAF_FEATURES, 0, "edx", 8),
    "apic": (LEAF_FEATURES, 0, "edx", 9),
    "mtrr": (LEAF_FEATURES, 0, "edx", 12),
    "pge": (LEAF_FEATURES, 0, "edx", 13),
    "cmov": (LEAF_FEATURES, 0, "edx", 15),
    "pat": (LEAF_FEATURES, 0, "edx", 16),
    "clflush": (LEAF_FEATURES, 0, "edx", 19),
    "mmx": (LEAF_FEATURES, 0, "edx", 23),
    "fxsr": (LEAF_FEATURES, 0, "edx", 24),
    "sse": (LEAF_FEATURES, 0, "edx", 25),
    "sse2": (LEAF_FEATURES, 0, "edx", 26),
    "ht": (LEAF_FEATURES, 0, "edx", 28),
    "sse3": (LEAF_FEATURES, 0, "ecx", 0),
    "pclmulqdq": (LEAF_FEATURES, 0, "ecx", 1),
    "ssse3": (LEAF_FEATURES, 0, "ecx", 9),
    "fma": (LEAF_FEATURES, 0, "ecx", 12),
    "cx16": (LEAF_FEATURES, 0, "ecx", 13),
    "pcid": (LEAF_FEATURES, 0, "ecx", 17),
    "sse4_1": (LEAF_FEATURES, 0, "ecx", 19),
    "sse4_2": (LEAF_FEATURES, 0, "ecx", 20),
    "x2apic": (LEAF_FEATURES, 0, "ecx", 21),
    "movbe": (LEAF_FEATURES, 0, "ecx", 22),
    "popcnt": (LEAF_FEATURES, 0, "ecx", 23),
    "tsc_deadline": (LEAF_FEATURES, 0, "ecx", 24),
    "aes": (LEAF_FEATURES, 0, "ecx", 25),
    "xsave": (LEAF_FEATURES, 0, "ecx", 26),
    "osxsave": (LEAF_FEATURES, 0, "ecx", 27),
    "avx": (LEAF_FEATURES, 0, "ecx", 28),
    "f16c": (LEAF_FEATURES, 0, "ecx", 29),
    "rdrand": (LEAF_FEATURES, 0, "ecx", 30),
    "hypervisor": (LEAF_FEATURES, 0, "ecx", 31),
    "fsgsbase": (LEAF_STRUCTURED, 0, "ebx", 0),
    "bmi1": (LEAF_STRUCTURED, 0, "ebx", 3),
    "avx2": (LEAF_STRUCTURED, 0, "ebx", 5),
    "smep": (LEAF_STRUCTURED, 0, "ebx", 7),
    "bmi2": (LEAF_STRUCTURED, 0, "ebx", 8),
    "erms": (LEAF_STRUCTURED, 0, "ebx", 9),
    "invpcid": (LEAF_STRUCTURED, 0, "ebx", 10),
    "avx512f": (LEAF_STRUCTURED, 0, "ebx", 16),
    "rdseed": (LEAF_STRUCTURED, 0, "ebx", 18),
    "adx": (LEAF_STRUCTURED, 0, "ebx", 19),
    "smap": (LEAF_STRUCTURED, 0, "ebx", 20),
    "clflushopt": (LEAF_STRUCTURED, 0, "ebx", 23),
    "sha": (LEAF_STRUCTURED, 0, "ebx", 29),
    "umip": (LEAF_STRUCTURED, 0, "ecx", 2),
    "pku": (LEAF_STRUCTURED, 0, "ecx", 3),
    "la57": (LEAF_STRUCTURED, 0, "ecx", 16),
    "rdpid": (LEAF_STRUCTURED, 0, "ecx", 22),
    "xsaveopt": (LEAF_XSAVE, 1, "eax", 0),
    "xsavec": (LEAF_XSAVE, 1, "eax", 1),
    "xgetbv1": (LEAF_XSAVE, 1, "eax", 2),
    "xsaves": (LEAF_XSAVE, 1, "eax", 3),
    "syscall": (LEAF_EXTENDED, 0, "edx", 11),
    "nx": (LEAF_EXTENDED, 0, "edx", 20),
    "pdpe1gb": (LEAF_EXTENDED, 0, "edx", 26),
    "rdtscp": (LEAF_EXTENDED, 0, "edx", 27),
    "lm": (LEAF_EXTENDED, 0, "edx", 29),
    "lahf_lm": (LEAF_EXTENDED, 0, "ecx", 0),
    "abm": (LEAF_EXTENDED, 0, "ecx", 5),
}

# Masking the key also masks these (they need it to work).
DEPENDENTS = {
    "xsave": ["osxsave", "avx", "xsaveopt", "xsavec", "xgetbv1", "xsaves"],
    "avx": ["avx2", "fma", "f16c", "avx512f"],
    "avx2": ["avx512f"],
    "sse": ["sse2"],
    "sse2": ["sse3"],
    "sse3": ["ssse3"],
    "ssse3": ["sse4_1"],
    "sse4_1": ["sse4_2"],
    "apic": ["x2apic", "tsc_deadline"],
}

XCR0_X87, XCR0_SSE, XCR0_AVX = 1 << 0, 1 << 1, 1 << 2
XCR0_AVX512 = 0xE0  # opmask, ZMM_Hi256, Hi16_ZMM
KVM_SIGNATURE_LEAF = 0x40000000
KVM_FEATURES_LEAF = 0x40000001
HYPERVISOR_BIT = 31           # CPUID.1:ECX, which KVM_GET_SUPPORTED_CPUID leaves to the VMM


class CpuFeatureError(ValueError):
    pass


def parse_feature_mask(text):
    """'-xsave,-cx16' -> {"xsave", "cx16"} (the features to hide)."""
    masked = set()
    for item in filter(None, (part.strip() for part in (text or "").split(","))):
        if not item.startswith("-"):
            raise CpuFeatureError(f"cannot add CPU feature {item!r}: only masking (-name) is supported")
        name = item[1:].lower().replace("-", "_").replace(".", "_")
        if name not in FEATURES:
            raise CpuFeatureError(f"unknown CPU feature {item[1:]!r} (known: {', '.join(sorted(FEATURES))})")
        masked.add(name)
    return close_over_dependents(masked)


def close_over_dependents(masked):
    pending, closed = list(masked), set()
    while pending:
        name = pending.pop()
        if name not in closed:
            closed.add(name)
            pending.extend(DEPENDENTS.get(name, ()))
    return closed


def _entry(entries, leaf, subleaf=0):
    for entry in entries:
        if entry["function"] == leaf and entry["index"] == subleaf:
            return entry
    return None


def mask_features(entries, masked):
    """Clears the masked feature bits in `entries` (a list of CPUID dicts) in place."""
    for name in masked:
        leaf, subleaf, register, bit = FEATURES[name]
        entry = _entry(entries, leaf, subleaf)
        if entry is not None:
            entry[register] &= ~(1 << bit)
    if "xsave" in masked:
        for entry in entries:
            if entry["function"] == LEAF_XSAVE:
                entry.update(eax=0, ebx=0, ecx=0, edx=0)
    elif "avx" in masked:
        xsave = _entry(entries, LEAF_XSAVE, 0)
        if xsave is not None:
            xsave["eax"] &= ~(XCR0_AVX | XCR0_AVX512)
    return entries


def kvm_features(entries):
    """KVM's paravirtual feature bits (CPUID 0x40000001 EAX) in a table, 0 if none."""
    entry = _entry(entries, KVM_FEATURES_LEAF, 0)
    return entry["eax"] if entry is not None else 0


def has_feature(entries, name):
    leaf, subleaf, register, bit = FEATURES[name]
    entry = _entry(entries, leaf, subleaf)
    return entry is not None and bool(entry[register] >> bit & 1)


def boot_xcr0(entries):
    """XCR0 for a vCPU at boot: x87 always, SSE and AVX when the CPUID says so."""
    xcr0 = XCR0_X87
    xsave = _entry(entries, LEAF_XSAVE, 0)
    supported = xsave["eax"] if xsave else 0
    if has_feature(entries, "sse"):
        xcr0 |= XCR0_SSE & supported
    if has_feature(entries, "avx"):
        xcr0 |= XCR0_AVX & supported
    return xcr0


def _bits_for(count):
    return max(0, (count - 1).bit_length())


SIGNIFICANT_INDEX = 1  # KVM_CPUID_FLAG_SIGNIFCANT_INDEX


def topology_entries(leaf, apic_id, cpus):
    """Leaf 0xB (or 0x1F) subleaves: one thread per core, `cpus` cores, then the end marker."""
    core_bits = _bits_for(cpus)
    levels = [(0, 1, 1), (core_bits, cpus, 2), (0, 0, 0)]   # (shift, count, level type)
    return [{"function": leaf, "index": index, "flags": SIGNIFICANT_INDEX, "eax": shift,
             "ebx": count, "ecx": (level_type << 8) | index, "edx": apic_id}
            for index, (shift, count, level_type) in enumerate(levels)]


def vcpu_cpuid(supported, apic_id, cpus=1, masked=()):
    """The CPUID table for the vCPU with `apic_id` in a VM of `cpus` vCPUs.

    One core per package per vCPU, no SMT: leaf 1 carries the APIC ID and
    logical count, leaves 0xB/0x1F the x2APIC ID and the topology.
    """
    entries = []
    topology_leaves = []
    for entry in supported:
        entry = dict(entry)
        function = entry["function"]
        if function in (LEAF_TOPOLOGY, LEAF_V2_TOPOLOGY):
            if function not in topology_leaves:
                topology_leaves.append(function)
            continue
        if function == LEAF_FEATURES:
            # Without it Linux takes itself for bare metal and never looks for
            # the KVM leaves: no KVM clock (it calibrates the TSC against the
            # PIT, and where that fails it reads the ACPI PM timer, one exit a
            # clock read), no PV EOI or steal time. QEMU and Firecracker set it.
            entry["ecx"] |= 1 << HYPERVISOR_BIT
            entry["ebx"] = (entry["ebx"] & 0x0000FFFF) | (cpus & 0xFF) << 16 | (apic_id & 0xFF) << 24
            if cpus > 1:
                entry["edx"] |= 1 << FEATURES["ht"][3]
        entries.append(entry)
    for leaf in topology_leaves:
        entries.extend(topology_entries(leaf, apic_id, cpus))
    return mask_features(entries, masked)
