"""The complete KVM state of a VM as plain data: every vCPU, the in-kernel
interrupt controllers, the PIT and the KVM clock.

Save a vCPU only while no thread runs it (it is paused outside KVM_RUN, with
every exit completed); restore it before it runs again. The order of the
ioctls matters, and follows Firecracker's and QEMU's:

save:    MP state first (reading it lets the LAPIC accept pending INIT/SIPI,
         which changes the rest), then registers, special registers, XSAVE,
         XCRs, debug registers, LAPIC, MSRs, and the pending events last (the
         other reads may still change them).
restore: CPUID first (what the other ioctls accept depends on it), MP state,
         registers, special registers (they carry the APIC base, so before
         the LAPIC), XSAVE, XCRs, debug registers, LAPIC (before the MSRs:
         the TSC deadline MSR needs a configured LAPIC), MSRs, and the events
         last (KVM_SET_REGS drops a pending exception, which they restore).

The VM's part (PIC master and slave, IOAPIC, PIT, clock) is restored after
the vCPUs, and the clock last, so kvmclock continues from the saved value
whatever the TSC did meanwhile.

Everything comes back as dicts, lists, ints and hex strings (plain.py);
restore_* raise ValueError for state that does not fit KVM's structures and
KvmError for state KVM refuses.
"""

import errno

from .._kvm import ffi, lib
from ._ioctl import ioctl
from .errors import KvmError
from .plain import fill, from_plain, hex_bytes, integer, to_plain

VCPU_KEYS = ("cpuid", "mp_state", "regs", "sregs", "xsave", "xcrs", "debugregs", "lapic", "msrs", "events")
VM_KEYS = ("pic_master", "pic_slave", "ioapic", "pit", "clock")
IOAPIC_PINS = lib.KVM_IOAPIC_NUM_PINS
# struct kvm_irqchip: chip_id, pad, then the 512-byte union; struct
# kvm_ioapic_state: base_address, ioregsel, id, irr, pad, then the table.
_CHIP_OFFSET = 8
_REDIRECTION_OFFSET = 24
_CPUID_FIELDS = ("function", "index", "flags", "eax", "ebx", "ecx", "edx")
# Which event fields KVM_SET_VCPU_EVENTS should take besides the flags KVM_GET reported.
_EVENTS_VALID = lib.KVM_VCPUEVENT_VALID_NMI_PENDING | lib.KVM_VCPUEVENT_VALID_SIPI_VECTOR


def _check_layout():
    if ffi.sizeof("struct kvm_irqchip") != _CHIP_OFFSET + 512 or \
            ffi.sizeof("struct kvm_ioapic_state") != _REDIRECTION_OFFSET + 8 * IOAPIC_PINS:
        raise ImportError("unexpected struct kvm_irqchip / kvm_ioapic_state layout")


_check_layout()


def msrs_to_save(vcpu):
    """The MSRs a snapshot holds: those KVM saves and restores
    (KVM_GET_MSR_INDEX_LIST) and the feature MSRs, as far as this vCPU reads them."""
    kvm = vcpu.vm.kvm
    indices = getattr(kvm, "_snapshot_msrs", None)
    if indices is None:
        wanted = list(dict.fromkeys(kvm.msr_index_list() + kvm.msr_feature_index_list()))
        indices = kvm._snapshot_msrs = vcpu.readable_msrs(wanted)
    return indices


# --- vCPUs ------------------------------------------------------------------------

def save_vcpu(vcpu):
    """Everything KVM holds for a stopped vCPU, as plain data."""
    state = {"mp_state": vcpu.get_mp_state(raw=True)}
    state["regs"] = to_plain(vcpu.get_regs())
    state["sregs"] = to_plain(vcpu.get_sregs())
    state["xsave"] = vcpu.get_xsave().hex()
    state["xcrs"] = [[xcr, value] for xcr, value in sorted(vcpu.get_xcrs().items())]
    state["debugregs"] = to_plain(vcpu.get_debugregs())
    state["lapic"] = bytes(vcpu.get_lapic()).hex()
    state["msrs"] = [[index, value] for index, value in vcpu.get_msrs(msrs_to_save(vcpu)).items()]
    state["events"] = to_plain(vcpu.get_vcpu_events())
    state["cpuid"] = vcpu.get_cpuid()
    return state


class VcpuState:
    """A vCPU's saved state decoded into the structures its ioctls take,
    checked and built once; restore() may then be called any number of times."""

    def __init__(self, vcpu, state, where="vcpu"):
        _keys(state, VCPU_KEYS, where)
        self.cpuid = _cpuid(state["cpuid"], f"{where}.cpuid")
        self.mp_state = ffi.new("struct kvm_mp_state *",
                                {"mp_state": integer(state["mp_state"], 32, f"{where}.mp_state")})
        self.regs = from_plain("struct kvm_regs", state["regs"], f"{where}.regs")
        self.sregs = from_plain("struct kvm_sregs", state["sregs"], f"{where}.sregs")
        xsave = hex_bytes(state["xsave"], vcpu.vm.xsave_size, f"{where}.xsave")
        self._xsave_area = ffi.new("char[]", xsave)
        self.xsave = ffi.cast("struct kvm_xsave *", self._xsave_area)
        xcrs = _pairs(state["xcrs"], 32, f"{where}.xcrs")
        if len(xcrs) > 16:
            raise ValueError(f"{where}.xcrs: more than 16")
        self.xcrs = ffi.new("struct kvm_xcrs *", {"nr_xcrs": len(xcrs)})
        for i, (xcr, value) in enumerate(sorted(xcrs.items())):
            self.xcrs.xcrs[i].xcr, self.xcrs.xcrs[i].value = xcr, value
        self.debugregs = from_plain("struct kvm_debugregs", state["debugregs"], f"{where}.debugregs")
        self.lapic = ffi.new("struct kvm_lapic_state *")
        ffi.memmove(self.lapic, hex_bytes(state["lapic"], ffi.sizeof("struct kvm_lapic_state"),
                                          f"{where}.lapic"), ffi.sizeof("struct kvm_lapic_state"))
        msrs = sorted(_pairs(state["msrs"], 32, f"{where}.msrs").items())
        self.msrs = ffi.new("struct kvm_msrs *", {"nmsrs": len(msrs), "entries": len(msrs)})
        for i, (index, value) in enumerate(msrs):
            self.msrs.entries[i].index, self.msrs.entries[i].data = index, value
        self.msr_indices = [index for index, _ in msrs]
        self.events = from_plain("struct kvm_vcpu_events", state["events"], f"{where}.events")
        self.events.flags |= _EVENTS_VALID

    def restore(self, vcpu, cpuid=True, stage=False):
        """Puts the state into `vcpu` (cpuid=False: its CPUID is already this one,
        e.g. when a running VM goes back to a checkpoint of itself).

        stage: registers, special registers and events go into kvm_run for
        KVM to take when the vCPU next enters (three ioctls fewer), provided
        the APIC base is the saved one: the special registers carry it, and
        the LAPIC, set here first, must find it in place."""
        if cpuid:
            vcpu.set_cpuid(self.cpuid)
        fd = vcpu.fd
        ioctl(fd, "KVM_SET_MP_STATE", self.mp_state)
        staged = stage and vcpu.apic_base == self.sregs.apic_base and \
            vcpu.stage(self.regs, self.sregs, self.events)
        if not staged:
            vcpu.set_regs(self.regs)
            vcpu.set_sregs(self.sregs)
        ioctl(fd, "KVM_SET_XSAVE", self.xsave)
        if self.xcrs.nr_xcrs:
            ioctl(fd, "KVM_SET_XCRS", self.xcrs)
        vcpu.set_debugregs(self.debugregs)
        ioctl(fd, "KVM_SET_LAPIC", self.lapic)
        if self.msrs.nmsrs:
            done = ioctl(fd, "KVM_SET_MSRS", self.msrs)
            if done != self.msrs.nmsrs:
                raise KvmError("KVM_SET_MSRS", errno.EINVAL, f"MSR {self.msr_indices[done]:#x} refused")
        if not staged:
            vcpu.set_vcpu_events(self.events)


def restore_vcpu(vcpu, state, where="vcpu"):
    """Checks `state` (from save_vcpu) and puts it into a vCPU that is not running."""
    VcpuState(vcpu, state, where).restore(vcpu)


# --- the VM's in-kernel devices ----------------------------------------------------

def save_vm(vm):
    """PIC master and slave, IOAPIC, PIT and KVM clock, as plain data."""
    return {
        "pic_master": to_plain(_pic(vm.get_irqchip(lib.KVM_IRQCHIP_PIC_MASTER))),
        "pic_slave": to_plain(_pic(vm.get_irqchip(lib.KVM_IRQCHIP_PIC_SLAVE))),
        "ioapic": _ioapic_to_plain(vm.get_irqchip(lib.KVM_IRQCHIP_IOAPIC)),
        "pit": to_plain(vm.get_pit2()),
        "clock": vm.get_clock(),
    }


class VmState:
    """The VM's saved state decoded and checked once (see VcpuState)."""

    def __init__(self, state, where="vm"):
        _keys(state, VM_KEYS, where)
        self.chips = []
        for chip, key in ((lib.KVM_IRQCHIP_PIC_MASTER, "pic_master"), (lib.KVM_IRQCHIP_PIC_SLAVE, "pic_slave")):
            irqchip = ffi.new("struct kvm_irqchip *", {"chip_id": chip})
            fill(_pic(irqchip), state[key], f"{where}.{key}")
            self.chips.append(irqchip)
        self.chips.append(_ioapic_from_plain(state["ioapic"], f"{where}.ioapic"))
        self.pit = from_plain("struct kvm_pit_state2", state["pit"], f"{where}.pit")
        self.clock = integer(state["clock"], 64, f"{where}.clock")

    def restore(self, vm, clock=True):
        for irqchip in self.chips:
            vm.set_irqchip(irqchip)
        vm.set_pit2(self.pit)
        if clock:
            vm.set_clock(self.clock)


def restore_vm(vm, state, where="vm"):
    VmState(state, where).restore(vm)


# --- helpers ------------------------------------------------------------------------

def _pic(irqchip):
    return ffi.cast("struct kvm_pic_state *", ffi.cast("char *", irqchip) + _CHIP_OFFSET)


def _ioapic(irqchip):
    base = ffi.cast("char *", irqchip) + _CHIP_OFFSET
    return (ffi.cast("struct kvm_ioapic_state *", base),
            ffi.cast("uint64_t *", base + _REDIRECTION_OFFSET))


def _ioapic_to_plain(irqchip):
    ioapic, table = _ioapic(irqchip)
    plain = to_plain(ioapic)
    plain["redirtbl"] = [table[pin] for pin in range(IOAPIC_PINS)]
    return plain


def _ioapic_from_plain(data, where):
    irqchip = ffi.new("struct kvm_irqchip *", {"chip_id": lib.KVM_IRQCHIP_IOAPIC})
    ioapic, table = _ioapic(irqchip)
    if not isinstance(data, dict):
        raise ValueError(f"{where}: expected an object")
    data = dict(data)
    redirection = data.pop("redirtbl", None)
    if not isinstance(redirection, list) or len(redirection) != IOAPIC_PINS:
        raise ValueError(f"{where}.redirtbl: expected a list of {IOAPIC_PINS}")
    fill(ioapic, data, where)
    for pin, entry in enumerate(redirection):
        table[pin] = integer(entry, 64, f"{where}.redirtbl[{pin}]")
    return irqchip


def _keys(state, keys, where):
    if not isinstance(state, dict):
        raise ValueError(f"{where}: expected an object")
    missing = [key for key in keys if key not in state]
    unknown = [key for key in state if key not in keys]
    if missing or unknown:
        raise ValueError(f"{where}: missing {missing}, unknown {unknown}")


def _pairs(data, bits, where):
    if not isinstance(data, list):
        raise ValueError(f"{where}: expected a list of [index, value] pairs")
    pairs = {}
    for i, pair in enumerate(data):
        if not isinstance(pair, list) or len(pair) != 2:
            raise ValueError(f"{where}[{i}]: expected [index, value]")
        pairs[integer(pair[0], bits, f"{where}[{i}]")] = integer(pair[1], 64, f"{where}[{i}]")
    return pairs


def _cpuid(data, where):
    if not isinstance(data, list) or not 1 <= len(data) <= 256:
        raise ValueError(f"{where}: expected a list of 1 to 256 entries")
    entries = []
    for i, entry in enumerate(data):
        if not isinstance(entry, dict) or sorted(entry) != sorted(_CPUID_FIELDS):
            raise ValueError(f"{where}[{i}]: expected the fields {', '.join(_CPUID_FIELDS)}")
        entries.append({key: integer(entry[key], 32, f"{where}[{i}].{key}") for key in _CPUID_FIELDS})
    return entries
