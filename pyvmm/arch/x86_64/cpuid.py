"""The CPUID table given to each vCPU: KVM's supported set plus per-vCPU IDs."""

LEAF_FEATURES = 0x1
LEAF_EXTENDED_TOPOLOGY = 0xB
LEAF_V2_EXTENDED_TOPOLOGY = 0x1F


def vcpu_cpuid(supported, apic_id):
    """A copy of `supported` (Kvm.supported_cpuid()) for the vCPU with `apic_id`."""
    entries = []
    for entry in supported:
        entry = dict(entry)
        if entry["function"] == LEAF_FEATURES:
            entry["ebx"] = (entry["ebx"] & 0x00FFFFFF) | (apic_id & 0xFF) << 24
        elif entry["function"] in (LEAF_EXTENDED_TOPOLOGY, LEAF_V2_EXTENDED_TOPOLOGY):
            entry["edx"] = apic_id
        entries.append(entry)
    return entries
