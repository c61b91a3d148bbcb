"""The x86-64 register file as gdb sees it: layout, target.xml, KVM state.

gdb's amd64 architecture needs the feature `org.gnu.gdb.i386.core` (general
registers, rip, eflags, the six selectors, then the x87 registers) and
takes `org.gnu.gdb.i386.sse` (xmm0-15, mxcsr) and
`org.gnu.gdb.i386.segments` (fs_base, gs_base). Everything KVM gives us
fills them: KVM_GET_REGS, KVM_GET_SREGS, KVM_GET_FPU and the
KERNEL_GS_BASE MSR. The system registers (k_gs_base, cr0, cr2, cr3, cr4,
cr8, efer) are a feature of our own, `org.pyvmm.gdb.x86-64.system`, which
gdb shows as extra registers (`info registers cr3`, `p/x $efer`).

`g`, `G`, `p` and `P` use the numbering and sizes below (little-endian).
"""

from collections import namedtuple

Register = namedtuple("Register", "name bits type group feature")

CORE, SSE, SEGMENTS, SYSTEM = ("org.gnu.gdb.i386.core", "org.gnu.gdb.i386.sse",
                               "org.gnu.gdb.i386.segments", "org.pyvmm.gdb.x86-64.system")
GPRS = ("rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rbp", "rsp",
        "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15")
SELECTORS = ("cs", "ss", "ds", "es", "fs", "gs")
X87_CONTROL = ("fctrl", "fstat", "ftag", "fiseg", "fioff", "foseg", "fooff", "fop")
SYSTEM_REGISTERS = ("k_gs_base", "cr0", "cr2", "cr3", "cr4", "cr8", "efer")


def _layout():
    regs = []
    for name in GPRS:
        kind = "data_ptr" if name in ("rbp", "rsp") else "int64"
        regs.append(Register(name, 64, kind, "general", CORE))
    regs.append(Register("rip", 64, "code_ptr", "general", CORE))
    regs.append(Register("eflags", 32, "i386_eflags", "general", CORE))
    regs += [Register(name, 32, "int32", "general", CORE) for name in SELECTORS]
    regs += [Register(f"st{i}", 80, "i387_ext", "float", CORE) for i in range(8)]
    regs += [Register(name, 32, "int", "float", CORE) for name in X87_CONTROL]
    regs += [Register(f"xmm{i}", 128, "vec128", "sse", SSE) for i in range(16)]
    regs.append(Register("mxcsr", 32, "i386_mxcsr", "vector", SSE))
    regs += [Register(name, 64, "int64", "system", SEGMENTS) for name in ("fs_base", "gs_base")]
    regs += [Register(name, 64, "int64", "system", SYSTEM) for name in SYSTEM_REGISTERS]
    return tuple(regs)


REGISTERS = _layout()
NUMBERS = {reg.name: number for number, reg in enumerate(REGISTERS)}
SIZES = tuple(reg.bits // 8 for reg in REGISTERS)
G_PACKET_BYTES = sum(SIZES)

# --- target.xml ----------------------------------------------------------------
_EFLAGS = ((0, "CF"), (1, ""), (2, "PF"), (4, "AF"), (6, "ZF"), (7, "SF"), (8, "TF"),
           (9, "IF"), (10, "DF"), (11, "OF"), (14, "NT"), (16, "RF"), (17, "VM"),
           (18, "AC"), (19, "VIF"), (20, "VIP"), (21, "ID"))
_MXCSR = ((0, "IE"), (1, "DE"), (2, "ZE"), (3, "OE"), (4, "UE"), (5, "PE"), (6, "DAZ"),
          (7, "IM"), (8, "DM"), (9, "ZM"), (10, "OM"), (11, "UM"), (12, "PM"), (15, "FZ"))
_VECTORS = (("v4f", "ieee_single", 4), ("v2d", "ieee_double", 2), ("v16i8", "int8", 16),
            ("v8i16", "int16", 8), ("v4i32", "int32", 4), ("v2i64", "int64", 2))


def _flags(name, bits):
    fields = "".join(f'<field name="{field}" start="{bit}" end="{bit}"/>' for bit, field in bits)
    return f'<flags id="{name}" size="4">{fields}</flags>'


_TYPES = {
    CORE: _flags("i386_eflags", _EFLAGS),
    SSE: "".join(f'<vector id="{name}" type="{kind}" count="{count}"/>'
                 for name, kind, count in _VECTORS)
    + '<union id="vec128">'
    + "".join(f'<field name="{field}" type="{name}"/>' for field, name in (
        ("v4_float", "v4f"), ("v2_double", "v2d"), ("v16_int8", "v16i8"),
        ("v8_int16", "v8i16"), ("v4_int32", "v4i32"), ("v2_int64", "v2i64"),
        ("uint128", "uint128")))
    + "</union>" + _flags("i386_mxcsr", _MXCSR),
}


def target_xml():
    """The target description gdb reads with qXfer:features:read:target.xml."""
    parts = ['<?xml version="1.0"?><!DOCTYPE target SYSTEM "gdb-target.dtd">',
             "<target><architecture>i386:x86-64</architecture>"]
    feature = None
    for number, reg in enumerate(REGISTERS):
        if reg.feature != feature:
            if feature is not None:
                parts.append("</feature>")
            feature = reg.feature
            parts.append(f'<feature name="{feature}">{_TYPES.get(feature, "")}')
        parts.append(f'<reg name="{reg.name}" bitsize="{reg.bits}" type="{reg.type}" '
                     f'group="{reg.group}" regnum="{number}"/>')
    parts.append("</feature></target>")
    return "".join(parts).encode("ascii")


TARGET_XML = target_xml()


# --- packing -----------------------------------------------------------------------
def pack(values):
    """{name: int} -> the `g` packet's bytes (every register, in order)."""
    return b"".join(pack_one(number, values[reg.name]) for number, reg in enumerate(REGISTERS))


def pack_one(number, value):
    return (value & ((1 << (8 * SIZES[number])) - 1)).to_bytes(SIZES[number], "little")


def unpack(data):
    """The `G` packet's bytes -> {name: int}; ValueError unless exactly complete."""
    if len(data) != G_PACKET_BYTES:
        raise ValueError(f"register block of {len(data)} bytes, expected {G_PACKET_BYTES}")
    values, offset = {}, 0
    for reg, size in zip(REGISTERS, SIZES):
        values[reg.name] = int.from_bytes(data[offset:offset + size], "little")
        offset += size
    return values


# --- KVM state <-> gdb's registers ---------------------------------------------------
RFLAGS_MASK = (1 << 32) - 1
# struct kvm_sregs fields behind the selector registers.
_SEGMENT_FIELDS = {"cs": "cs", "ss": "ss", "ds": "ds", "es": "es", "fs": "fs", "gs": "gs"}
_SREGS_WORDS = ("cr0", "cr2", "cr3", "cr4", "cr8", "efer")


def _tag(raw, valid):
    """The 2-bit x87 tag of one register from its 80-bit contents."""
    if not valid:
        return 3
    exponent = (raw >> 64) & 0x7FFF
    mantissa = raw & ((1 << 64) - 1)
    if exponent == 0x7FFF:
        return 2
    if exponent == 0:
        return 1 if mantissa == 0 else 2
    return 0 if mantissa >> 63 else 2


def full_tag_word(fsw, ftwx, stack):
    """FXSAVE's abridged tag byte -> the x87 tag word gdb shows (`ftag`).
    `stack` are st0..st7 as 80-bit integers (stack order)."""
    top = (fsw >> 11) & 7
    word = 0
    for physical in range(8):
        raw = stack[(physical - top) & 7]
        word |= _tag(raw, ftwx >> physical & 1) << (2 * physical)
    return word


def abridged_tag(ftag):
    """The x87 tag word -> FXSAVE's abridged byte (a bit per non-empty register)."""
    return sum(1 << physical for physical in range(8) if (ftag >> 2 * physical) & 3 != 3)


def _bytes(array, count):
    """The first `count` bytes of a cffi __u8 array (or any sequence of ints)."""
    return bytes(array[index] for index in range(count))


def from_kvm(regs, sregs, fpu, kernel_gs_base):
    """gdb's register values from KVM_GET_REGS/SREGS/FPU and the MSR."""
    values = {name: getattr(regs, name) for name in GPRS}
    values["rip"] = regs.rip
    values["eflags"] = regs.rflags & RFLAGS_MASK
    for name in SELECTORS:
        values[name] = getattr(sregs, _SEGMENT_FIELDS[name]).selector
    stack = [int.from_bytes(_bytes(fpu.fpr[i], 10), "little") for i in range(8)]
    for i in range(8):
        values[f"st{i}"] = stack[i]
    values["fctrl"] = fpu.fcw
    values["fstat"] = fpu.fsw
    values["ftag"] = full_tag_word(fpu.fsw, fpu.ftwx, stack)
    # 64-bit FXSAVE layout: the instruction and operand pointers are 64 bits;
    # gdb's amd64 code shows their high halves as fiseg/foseg.
    values["fioff"] = fpu.last_ip & 0xFFFFFFFF
    values["fiseg"] = fpu.last_ip >> 32
    values["fooff"] = fpu.last_dp & 0xFFFFFFFF
    values["foseg"] = fpu.last_dp >> 32
    values["fop"] = fpu.last_opcode & 0x7FF
    for i in range(16):
        values[f"xmm{i}"] = int.from_bytes(_bytes(fpu.xmm[i], 16), "little")
    values["mxcsr"] = fpu.mxcsr
    values["fs_base"] = sregs.fs.base
    values["gs_base"] = sregs.gs.base
    values["k_gs_base"] = kernel_gs_base
    for name in _SREGS_WORDS:
        values[name] = getattr(sregs, name)
    return values


class RegisterWriteError(ValueError):
    """A register write KVM's state cannot take (a selector change)."""


def to_kvm(old, new, regs, sregs, fpu):
    """Applies the registers that differ between `old` and `new` to the KVM
    structs in place. Returns the set of parts changed ("regs", "sregs",
    "fpu", "k_gs_base"). A selector cannot be changed (its hidden descriptor
    would not follow): RegisterWriteError, before anything is touched."""
    changed = {name for name, value in new.items() if old.get(name) != value}
    refused = changed & set(SELECTORS)
    if refused:
        raise RegisterWriteError(f"cannot change segment selector {sorted(refused)[0]}")
    parts = set()
    for name in changed:
        value = new[name]
        if name in GPRS or name == "rip":
            setattr(regs, name, value)
            parts.add("regs")
        elif name == "eflags":
            regs.rflags = value & RFLAGS_MASK
            parts.add("regs")
        elif name in ("fs_base", "gs_base"):
            getattr(sregs, name[:2]).base = value
            parts.add("sregs")
        elif name in _SREGS_WORDS:
            setattr(sregs, name, value)
            parts.add("sregs")
        elif name == "k_gs_base":
            parts.add("k_gs_base")
        else:
            _fpu_field(fpu, name, value, new)
            parts.add("fpu")
    return parts


def _fpu_field(fpu, name, value, new):
    if name.startswith("st"):
        raw = value.to_bytes(10, "little")
        index = int(name[2:])
        for offset in range(10):
            fpu.fpr[index][offset] = raw[offset]
    elif name.startswith("xmm"):
        raw = value.to_bytes(16, "little")
        index = int(name[3:])
        for offset in range(16):
            fpu.xmm[index][offset] = raw[offset]
    elif name == "fctrl":
        fpu.fcw = value & 0xFFFF
    elif name == "fstat":
        fpu.fsw = value & 0xFFFF
    elif name == "ftag":
        fpu.ftwx = abridged_tag(value)
    elif name in ("fioff", "fiseg"):
        fpu.last_ip = (new["fiseg"] << 32 | new["fioff"]) & ((1 << 64) - 1)
    elif name in ("fooff", "foseg"):
        fpu.last_dp = (new["foseg"] << 32 | new["fooff"]) & ((1 << 64) - 1)
    elif name == "fop":
        fpu.last_opcode = value & 0x7FF
    elif name == "mxcsr":
        fpu.mxcsr = value
