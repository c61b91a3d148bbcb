"""KVM's structures to plain data and back (pyvmm/kvm/plain.py), without /dev/kvm:
every struct the snapshot stores survives the trip, and damaged data is refused
with ValueError, never another exception."""

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pyvmm._kvm import ffi
from pyvmm.kvm.plain import from_plain, to_plain

STRUCTS = ["struct kvm_regs", "struct kvm_sregs", "struct kvm_fpu", "struct kvm_vcpu_events",
           "struct kvm_debugregs", "struct kvm_pic_state", "struct kvm_pit_state2",
           "struct kvm_ioapic_state", "struct kvm_lapic_state"]


def plain_for(ctype):
    """A strategy of plain data shaped like `ctype` (a cffi type)."""
    if ctype.kind == "struct":
        return st.fixed_dictionaries({name: plain_for(field.type) for name, field in ctype.fields})
    if ctype.kind == "array":
        if ctype.item.kind == "primitive" and ffi.sizeof(ctype.item) == 1:
            return st.binary(min_size=ctype.length, max_size=ctype.length).map(bytes.hex)
        return st.lists(plain_for(ctype.item), min_size=ctype.length, max_size=ctype.length)
    bits = 8 * ffi.sizeof(ctype)
    if int(ffi.cast(ctype, -1)) < 0:
        return st.integers(-(1 << bits - 1), (1 << bits - 1) - 1)
    return st.integers(0, (1 << bits) - 1)


@pytest.mark.parametrize("cname", STRUCTS)
@settings(max_examples=30, deadline=None)
@given(data=st.data())
def test_plain_data_round_trips(cname, data):
    plain = data.draw(plain_for(ffi.typeof(cname)))
    value = from_plain(cname, plain)
    assert to_plain(value) == plain
    assert json.loads(json.dumps(to_plain(value))) == plain     # and json keeps it as it is


def damage(plain, draw):
    """`plain` with one thing broken somewhere inside it."""
    if isinstance(plain, dict):
        key = draw(st.sampled_from(sorted(plain)))
        how = draw(st.sampled_from(["drop", "add", "inner", "type"]))
        broken = dict(plain)
        if how == "drop":
            del broken[key]
        elif how == "add":
            broken[key + "_extra"] = 0
        elif how == "type":
            broken[key] = draw(st.sampled_from([None, "x", 1.5, True, [], {}]))
        else:
            inner = damage(plain[key], draw)
            if inner is None:
                return None
            broken[key] = inner
        return broken
    if isinstance(plain, list):
        if draw(st.booleans()) or not plain:
            return plain + [plain[0] if plain else 0]
        index = draw(st.integers(0, len(plain) - 1))
        inner = damage(plain[index], draw)
        return None if inner is None else plain[:index] + [inner] + plain[index + 1:]
    if isinstance(plain, str):
        return draw(st.sampled_from([plain[:-2], plain + "00", "zz" + plain[2:], 7]))
    return draw(st.sampled_from([-1 - (1 << 64), 1 << 64, "1", None, 2.0]))


@pytest.mark.parametrize("cname", STRUCTS)
@settings(max_examples=40, deadline=None)
@given(data=st.data())
def test_damaged_plain_data_is_refused_with_a_reason(cname, data):
    plain = data.draw(plain_for(ffi.typeof(cname)))
    broken = damage(plain, data.draw)
    if broken is None or broken == plain:
        return
    with pytest.raises(ValueError, match=cname.split()[1]):
        from_plain(cname, broken)


def test_the_error_names_the_field():
    plain = to_plain(ffi.new("struct kvm_sregs *"))
    plain["cs"]["limit"] = 1 << 40
    with pytest.raises(ValueError, match=r"kvm_sregs\.cs\.limit: .* does not fit in 32 bits"):
        from_plain("struct kvm_sregs", plain)
