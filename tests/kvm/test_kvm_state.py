"""The complete KVM state (pyvmm/kvm/state.py) against real KVM: what one VM
reports survives plain data (and JSON) into a new VM, which reports it back
the same; values hypothesis puts into a vCPU and the in-kernel devices come
back unchanged; and a guest stopped at any exit continues in a second VM
whose KVM state (and memory) was restored, to the same output and status."""

import json
import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pyvmm import guests
from pyvmm.config import VmConfig
from pyvmm.kvm import Kvm
from pyvmm.kvm.plain import to_plain
from pyvmm.kvm.state import restore_vcpu, restore_vm, save_vcpu, save_vm
from pyvmm.machine import Machine

IA32_TSC = 0x10
# MSRs whose value moves with time (the TSC, and the TSC deadline it arms).
TIMED_MSRS = {IA32_TSC, 0x6E0}
SETTLE = dict(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def machine_for(name, **config):
    raw_mode = {"real.bin": "real", "long.bin": "long"}.get(name)
    return Machine(VmConfig(kernel=guests.path(name), serial="buffer", raw_mode=raw_mode, timeout=30, **config))


def timeless(vcpu_state):
    """A vCPU state without what moves on its own (the TSC)."""
    state = json.loads(json.dumps(vcpu_state))
    state["msrs"] = [pair for pair in state["msrs"] if pair[0] not in TIMED_MSRS]
    return state


def timeless_vm(vm_state):
    state = json.loads(json.dumps(vm_state))
    state.pop("clock")
    for channel in state["pit"]["channels"]:
        channel.pop("count_load_time")      # KVM stamps it with the host time of the restore
    return state


def test_every_part_of_a_vcpu_is_saved():
    with machine_for("hello.bin") as machine:
        state = save_vcpu(machine.vcpus[0])
        assert set(state) == {"cpuid", "mp_state", "regs", "sregs", "xsave", "xcrs", "debugregs",
                              "lapic", "msrs", "events"}
        msrs = dict(state["msrs"])
        assert IA32_TSC in msrs and 0x1A0 in msrs            # the TSC, IA32_MISC_ENABLE
        assert len(msrs) >= 20
        assert state["regs"]["rip"] == machine.boot.entry
        assert len(bytes.fromhex(state["xsave"])) == machine.vm.xsave_size
        assert len(bytes.fromhex(state["lapic"])) == 1024
        vm_state = save_vm(machine.vm)
        assert len(vm_state["ioapic"]["redirtbl"]) == 24
        assert vm_state["ioapic"]["base_address"] == 0xFEC00000
        assert len(vm_state["pit"]["channels"]) == 3


def test_state_moves_into_a_new_vm_through_json():
    with machine_for("smp.bin", cpus=2) as first, machine_for("hello.bin", cpus=2) as second:
        saved = json.loads(json.dumps([save_vcpu(vcpu) for vcpu in first.vcpus]))
        vm_saved = json.loads(json.dumps(save_vm(first.vm)))
        for vcpu, state in zip(second.vcpus, saved):
            restore_vcpu(vcpu, state)
        restore_vm(second.vm, vm_saved)
        again = [save_vcpu(vcpu) for vcpu in second.vcpus]
        assert [timeless(state) for state in again] == [timeless(state) for state in saved]
        assert timeless_vm(save_vm(second.vm)) == timeless_vm(vm_saved)
        assert saved[1]["mp_state"] != saved[0]["mp_state"]          # the AP waits for INIT/SIPI


canonical = st.one_of(st.integers(0, (1 << 47) - 1), st.integers((1 << 64) - (1 << 47), (1 << 64) - 1))


@pytest.fixture(scope="module")
def pair():
    with machine_for("hello.bin") as first, machine_for("hello.bin") as second:
        yield first, second


@settings(**SETTLE)
@given(registers=st.lists(st.integers(0, (1 << 64) - 1), min_size=16, max_size=16),
       rip=canonical, flags=st.integers(0, 0xFFF).map(lambda value: (value & 0xCD5) | 0x2),
       debug=st.lists(canonical, min_size=4, max_size=4),
       msrs=st.fixed_dictionaries({0x174: st.integers(0, 0xFFFF), 0x175: canonical, 0x176: canonical,
                                   0xC0000081: st.integers(0, (1 << 64) - 1), 0xC0000082: canonical,
                                   0xC0000102: canonical}),
       tpr=st.integers(0, 0xFF), pic_mask=st.integers(0, 0xFF),
       redirection=st.lists(st.integers(0, (1 << 64) - 1).map(lambda v: v & 0xFF000000_0001_A7FF),
                            min_size=24, max_size=24),
       pit_count=st.integers(1, 0xFFFF), interrupt_shadow=st.sampled_from([0, 1, 2]))
def test_values_put_into_kvm_come_back_in_a_new_vm(pair, registers, rip, flags, debug, msrs, tpr, pic_mask,
                                                   redirection, pit_count, interrupt_shadow):
    first, second = pair
    vcpu = first.vcpus[0]
    state = save_vcpu(vcpu)
    names = ["rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rsp", "rbp",
             "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15"]
    state["regs"].update(zip(names, registers), rip=rip, rflags=flags)
    state["debugregs"]["db"] = debug
    state["msrs"] = [[index, msrs.get(index, value)] for index, value in state["msrs"]]
    lapic = bytearray.fromhex(state["lapic"])
    struct.pack_into("<I", lapic, 0x80, tpr)
    state["lapic"] = lapic.hex()
    state["events"]["interrupt"]["shadow"] = interrupt_shadow
    restore_vcpu(vcpu, state)
    vm_state = save_vm(first.vm)
    vm_state["pic_master"]["imr"] = pic_mask
    vm_state["ioapic"]["redirtbl"] = redirection
    vm_state["pit"]["channels"][2]["count"] = pit_count
    restore_vm(first.vm, vm_state)

    moved = json.loads(json.dumps(save_vcpu(vcpu)))
    restore_vcpu(second.vcpus[0], moved)
    restore_vm(second.vm, json.loads(json.dumps(save_vm(first.vm))))
    final = save_vcpu(second.vcpus[0])
    assert final["regs"] == state["regs"]
    assert final["debugregs"]["db"] == debug
    assert {index: dict(final["msrs"])[index] for index in msrs} == msrs
    assert struct.unpack_from("<I", bytes.fromhex(final["lapic"]), 0x80)[0] == tpr
    assert final["events"]["interrupt"]["shadow"] == interrupt_shadow
    assert timeless(final) == timeless(moved)
    vm_final = save_vm(second.vm)
    assert vm_final["pic_master"]["imr"] == pic_mask
    assert vm_final["ioapic"]["redirtbl"] == redirection
    assert vm_final["pit"]["channels"][2]["count"] == pit_count


def test_a_refused_state_raises_the_kvm_error_not_a_crash():
    from pyvmm.kvm import KvmError
    with machine_for("hello.bin") as machine:
        state = save_vcpu(machine.vcpus[0])
        state["sregs"]["cr0"] = 0x80000000          # paging without protection: KVM refuses it
        with pytest.raises(KvmError):
            restore_vcpu(machine.vcpus[0], state)
        state = save_vcpu(machine.vcpus[0])
        state["xsave"] = state["xsave"][:-2]
        with pytest.raises(ValueError, match="xsave"):
            restore_vcpu(machine.vcpus[0], state)


def stop_after(machine, exits):
    """Runs `machine` until its `exits`-th exit (or its end). run() returns
    with that exit completed in KVM. Returns (RunResult, exits seen)."""
    seen = []

    def count(event):
        seen.append(1)
        if len(seen) == exits:
            event.stop(0)
    machine.add_hook(count, when="after")
    result = machine.run()
    return result, len(seen)


def uninterrupted(name, **config):
    with machine_for(name, **config) as machine:
        result = machine.run()
        return machine.serial_output, (result.status, result.reason)


@pytest.mark.parametrize("name, config", [("compute.elf", {}), ("long.bin", {}), ("real.bin", {}),
                                          ("smp.bin", {"cpus": 2})])
@settings(max_examples=4, deadline=None)
@given(data=st.data())
def test_a_guest_continues_in_a_second_vm_from_any_exit(name, config, data):
    expected_output, expected_end = uninterrupted(name, **config)
    exits = data.draw(st.integers(1, 60), label="exits")
    with machine_for(name, **config) as first:
        result, seen = stop_after(first, exits)
        if seen < exits:                             # it ended first: nothing to continue
            return
        before = first.serial_output
        vcpus = json.loads(json.dumps([save_vcpu(vcpu) for vcpu in first.vcpus]))
        vm_state = json.loads(json.dumps(save_vm(first.vm)))
        devices = json.loads(json.dumps(first.devices.save_state()))
        with machine_for(name, **config) as second:
            for source, target in zip(first.memory.regions, second.memory.regions):
                target.view[:] = source.view
            second.devices.restore_state(devices)
            restore_vm(second.vm, vm_state)
            for vcpu, state in zip(second.vcpus, vcpus):
                restore_vcpu(vcpu, state)
            result = second.run()
            assert before + second.serial_output == expected_output
            assert (result.status, result.reason) == expected_end


def test_dirty_log_reports_the_pages_the_guest_wrote():
    with machine_for("compute.elf") as machine:
        slot = machine.vm.slot_of(0)
        machine.vm.log_dirty_pages()
        assert machine.vm.dirty_log(slot).count(0) == len(machine.vm.dirty_log(slot))
        machine.run()
        bitmap = machine.vm.dirty_log(slot)
        dirty = {page for page in range(len(bitmap) * 8) if bitmap[page // 8] >> (page % 8) & 1}
        # compute.elf keeps its stack and bss at 0x201000-0x202fff
        assert {0x201, 0x202} & dirty
        assert all(page < 0x400 for page in dirty), sorted(dirty)
        assert not any(machine.vm.dirty_log(slot))          # read and cleared


def test_kvm_reports_feature_msrs():
    with Kvm() as kvm:
        assert isinstance(kvm.msr_feature_index_list(), list)
