"""The MSRs written when a vCPU boots and when it is reset."""

from hypothesis import given, strategies as st

from pyvmm.arch.x86_64 import msr

KVM_PV_MSRS = [0x11, 0x12, 0x4B564D00, 0x4B564D01, 0x4B564D02, 0x4B564D03, 0x4B564D04, 0x4B564D05,
               0x4B564D06, 0x4B564D07]
# CPUID 0x40000001 EAX as KVM reports it (clock sources, async PF, steal time, PV EOI, poll control...).
KVM_FEATURES = 0x1007EFB


def test_a_reset_turns_off_what_makes_kvm_write_into_guest_memory():
    supported = list(msr.RESET_MSRS) + KVM_PV_MSRS
    reset = msr.reset_msrs(supported, KVM_FEATURES)
    assert reset[msr.MSR_KVM_SYSTEM_TIME] == reset[msr.MSR_KVM_SYSTEM_TIME_NEW] == 0     # KVM clock
    assert reset[msr.MSR_KVM_ASYNC_PF_EN] == reset[msr.MSR_KVM_ASYNC_PF_INT] == 0
    assert reset[msr.MSR_KVM_STEAL_TIME] == reset[msr.MSR_KVM_PV_EOI_EN] == 0
    assert reset[msr.MSR_KVM_POLL_CONTROL] == 1                                          # its reset value
    assert 0x4B564D00 not in reset and 0x11 not in reset      # the wall clock is written once, on request
    assert reset[msr.IA32_TSC] == msr.TSC_AFTER_RESET


@given(features=st.integers(0, 2**32 - 1), supported=st.sets(st.sampled_from(KVM_PV_MSRS + list(msr.RESET_MSRS))))
def test_a_reset_writes_only_msrs_kvm_saves_and_pv_msrs_of_offered_features(features, supported):
    reset = msr.reset_msrs(supported, features)
    assert set(reset) <= supported
    for bit, (index, value) in msr.KVM_PV_RESET_MSRS.items():
        assert (index in reset) == (index in supported and bool(features >> bit & 1))
        assert reset.get(index, value) == value
    assert {index: value for index, value in reset.items() if index in msr.RESET_MSRS} == \
        {index: value for index, value in msr.RESET_MSRS.items() if index in supported}
