"""The platform pyvmm builds: vCPUs with their CPUID, in-kernel interrupt controllers."""

from pyvmm import guests
from pyvmm.arch.x86_64 import cpuid
from pyvmm.config import VmConfig
from pyvmm.loader import LoadOptions
from pyvmm.vmm import Machine


def hello_config(**overrides):
    return VmConfig(kernel=guests.path("hello.bin"), raw_mode="protected", serial="buffer",
                    **overrides)


# mov eax,1; cpuid; mov eax,ecx; mov edx,0x560; out dx,eax; mov eax,ebx; out dx,eax; cli; hlt
CPUID_LEAF1_PROBE = bytes.fromhex("b8010000000fa289c8ba60050000ef89d8effaf4")


class Words:
    def __init__(self):
        self.values = []

    def read(self, offset, size):
        return bytes(size)

    def write(self, offset, data):
        self.values.append(int.from_bytes(data, "little"))


def guest_leaf1(cpus, mask=""):
    """(ecx, ebx) of CPUID leaf 1 as the guest's boot CPU sees them."""
    config = VmConfig(serial="buffer", raw_mode="protected", cpus=cpus, timeout=20,
                      masked_features=cpuid.parse_feature_mask(mask))
    words = Words()
    with Machine(config, CPUID_LEAF1_PROBE, LoadOptions(raw_mode="protected")) as machine:
        machine.add_port_device(0x560, 4, words)
        assert machine.run().reason == "halt"
    return words.values


def test_guest_sees_masked_features_gone_and_its_topology():
    bit = {name: 1 << cpuid.FEATURES[name][3] for name in ("cx16", "x2apic")}
    ecx, ebx = guest_leaf1(cpus=3)
    assert ecx & bit["cx16"] and ecx & bit["x2apic"]
    assert (ebx >> 24, ebx >> 16 & 0xFF) == (0, 3)     # APIC ID 0 of 3 logical CPUs
    masked_ecx, _ = guest_leaf1(cpus=1, mask="-cx16,-x2apic")
    assert not masked_ecx & (bit["cx16"] | bit["x2apic"])


def test_kvm_holds_each_vcpus_apic_id():
    with Machine(hello_config(cpus=3)) as machine:
        for index, vcpu in enumerate(machine.vcpus):
            leaf1 = next(e for e in vcpu.get_cpuid() if e["function"] == 1)
            assert leaf1["ebx"] >> 24 == index
            leaf_b = [e for e in vcpu.get_cpuid() if e["function"] == 0xB]
            assert leaf_b and all(e["edx"] == index for e in leaf_b)


def test_smp_guest_that_never_starts_its_aps_still_ends():
    # hello.bin never sends INIT/SIPI: the APs stay dormant, the BSP halts,
    # and the run ends with status 0 instead of hanging.
    with Machine(hello_config(cpus=4, timeout=20)) as machine:
        result = machine.run()
    assert (result.status, result.reason) == (0, "halt")
    assert machine.serial_output == b"Hello from a pyvmm guest!\n"


def test_vcpu_threads_are_joined_after_an_smp_run():
    import threading
    before = threading.active_count()
    with Machine(hello_config(cpus=2)) as machine:
        machine.run()
    assert threading.active_count() == before
