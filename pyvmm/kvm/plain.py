"""KVM's structures as plain data (dicts, lists, ints, hex strings) and back.

A snapshot stores what KVM reports in a form json can write and a person can
read: a struct becomes a dict of its declared fields, an array of bytes a hex
string, any other array a list. Converting back checks every field: a
missing or unknown key, a value of the wrong type, length or range raises
ValueError naming the field, so a damaged state never reaches an ioctl.
"""

from .._kvm import ffi


def to_plain(value):
    """A cdata struct (or pointer to one), array or integer as plain data."""
    ctype = ffi.typeof(value) if isinstance(value, ffi.CData) else None
    if ctype is None:
        return value
    if ctype.kind == "pointer":
        value, ctype = value[0], ctype.item
        if ctype.kind != "struct":
            return value
    if ctype.kind == "struct":
        return {name: to_plain(getattr(value, name)) for name, _ in ctype.fields}
    if ctype.kind == "array":
        if _is_bytes(ctype.item):
            return bytes(ffi.buffer(value)).hex()
        return [to_plain(value[i]) for i in range(ctype.length)]
    raise TypeError(f"cannot convert {ctype.cname}")


def from_plain(cname, data, where=""):
    """A new `cname` (a struct type name) filled from plain data; ValueError if it does not fit."""
    ctype = ffi.typeof(cname)
    value = ffi.new(ffi.getctype(ctype, "*"))
    _fill_struct(value[0], ctype, data, where or cname)
    return value


def fill(target, data, where):
    """Fills an existing cdata struct (or pointer to one) from plain data."""
    ctype = ffi.typeof(target)
    if ctype.kind == "pointer":
        target, ctype = target[0], ctype.item
    _fill_struct(target, ctype, data, where)


def _is_bytes(ctype):
    return ctype.kind == "primitive" and ffi.sizeof(ctype) == 1


def _fill_struct(target, ctype, data, where):
    if not isinstance(data, dict):
        raise ValueError(f"{where}: expected an object, got {type(data).__name__}")
    names = [name for name, _ in ctype.fields]
    missing = [name for name in names if name not in data]
    unknown = [key for key in data if key not in names]
    if missing or unknown:
        raise ValueError(f"{where}: " + "; ".join(
            part for part in (missing and f"missing {', '.join(missing)}",
                              unknown and f"unknown {', '.join(map(str, unknown))}") if part))
    for name, field in ctype.fields:
        _fill_field(target, name, field.type, data[name], f"{where}.{name}")


def _fill_field(target, name, ctype, data, where):
    if ctype.kind == "struct":
        _fill_struct(getattr(target, name), ctype, data, where)
    elif ctype.kind == "array":
        _fill_array(getattr(target, name), ctype, data, where)
    else:
        setattr(target, name, _integer(ctype, data, where))


def _fill_array(target, ctype, data, where):
    if _is_bytes(ctype.item):
        raw = _hex(data, where)
        if len(raw) != ctype.length:
            raise ValueError(f"{where}: expected {ctype.length} bytes, got {len(raw)}")
        ffi.memmove(target, raw, len(raw))
        return
    if not isinstance(data, list) or len(data) != ctype.length:
        raise ValueError(f"{where}: expected a list of {ctype.length}")
    for i, item in enumerate(data):
        if ctype.item.kind == "struct":
            _fill_struct(target[i], ctype.item, item, f"{where}[{i}]")
        elif ctype.item.kind == "array":
            _fill_array(target[i], ctype.item, item, f"{where}[{i}]")
        else:
            target[i] = _integer(ctype.item, item, f"{where}[{i}]")


def _integer(ctype, data, where):
    if not isinstance(data, int) or isinstance(data, bool):
        raise ValueError(f"{where}: expected an integer, got {type(data).__name__}")
    bits = 8 * ffi.sizeof(ctype)
    signed = int(ffi.cast(ctype, -1)) < 0
    low, high = (-(1 << bits - 1), (1 << bits - 1) - 1) if signed else (0, (1 << bits) - 1)
    if not low <= data <= high:
        raise ValueError(f"{where}: {data} does not fit in {bits} bits")
    return data


def _hex(data, where):
    if not isinstance(data, str):
        raise ValueError(f"{where}: expected a hex string, got {type(data).__name__}")
    try:
        return bytes.fromhex(data)
    except ValueError:
        raise ValueError(f"{where}: not a hex string") from None


def hex_bytes(data, length, where):
    """Bytes of a hex string that must be exactly `length` bytes long."""
    raw = _hex(data, where)
    if len(raw) != length:
        raise ValueError(f"{where}: expected {length} bytes, got {len(raw)}")
    return raw


def integer(data, bits, where, signed=False):
    """A plain integer checked to fit in `bits` bits."""
    return _integer(ffi.typeof(f"{'int' if signed else 'uint'}{bits}_t"), data, where)
