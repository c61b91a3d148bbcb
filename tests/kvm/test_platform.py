"""The platform pyvmm builds: vCPUs with their CPUID, in-kernel interrupt controllers."""

import pytest

from pyvmm import guests
from pyvmm.arch.x86_64 import cpuid
from pyvmm.config import VmConfig
from pyvmm.loader import LoadOptions
from pyvmm.machine import Machine


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


def run_guest(name, cpus=1, cmdline="", timeout=60):
    config = VmConfig(kernel=guests.path(name), serial="buffer", cpus=cpus, cmdline=cmdline,
                      timeout=timeout)
    with Machine(config) as machine:
        result = machine.run()
    return result, machine.serial_output.decode()


@pytest.mark.parametrize("cpus", [1, 2, 4])
def test_boot_cpu_starts_every_ap_through_init_sipi(cpus):
    result, output = run_guest("smp.bin", cpus=cpus)
    lines = output.splitlines()
    assert lines[0] == "bsp 0"
    assert sorted(line for line in lines if line.endswith(" up")) == [
        f"cpu {apic_id} up" for apic_id in range(1, cpus)]
    assert lines[-1] == f"cpus {cpus}"
    assert result.status == (cpus << 1) | 1


def test_i8042_reset_ends_the_run_with_status_0():
    result, output = run_guest("reset.bin")
    assert output == "reset\n"
    assert (result.status, result.reason) == (0, "reset")


def test_acpi_tables_are_valid_and_s5_powers_off():
    result, output = run_guest("acpi.bin")
    for table in ("XSDT", "FACP", "APIC", "DSDT"):
        assert f"{table} ok" in output.splitlines()
    assert "s5 0" in output
    assert (result.status, result.reason) == (0, "poweroff")


def test_fw_cfg_answers_like_qemu():
    result, output = run_guest("fwcfg.bin", cpus=2, cmdline="a b c")
    assert "signature QEMU" in output
    assert f"ram_size {128 << 20:#018x}" in output
    assert "nb_cpus 2" in output
    # As QEMU: the command line is in fw_cfg for Linux and PVH kernels only.
    assert "cmdline_size 0" in output
    assert result.status == 1
    _, pvh_output = run_guest("fwcfg-pvh.elf", cmdline="a b c")
    assert "cmdline a b c" in pvh_output
