"""A Python model of guests/fuzz/fuzz_target.c's parser, and inputs shaped
like its records: the snapshot-fuzzing tests check the guest against it."""

from hypothesis import strategies as st

FNV_OFFSET, FNV_PRIME = 0x811C9DC5, 16777619


def model(data):
    """fuzz_target.c's parse(), in Python; None where it crashes (type 16)."""
    def add(checksum, value):
        return (checksum + sum(value)) & 0xFFFFFFFF

    def fnv(checksum, value):
        for byte in value:
            checksum = ((checksum ^ byte) * FNV_PRIME) & 0xFFFFFFFF
        return checksum

    def rotate(checksum, value):
        n = len(value) & 31
        return ((checksum << n) | (checksum >> (32 - n))) & 0xFFFFFFFF if n else checksum

    handlers = [None] + [add, fnv, rotate] * 5
    checksum, at = FNV_OFFSET, 0
    while at + 2 <= len(data):
        kind, size = data[at], data[at + 1]
        at += 2
        size = min(size, len(data) - at)
        value = data[at:at + size]
        at += size
        if kind == 0:
            break
        if kind > 16:
            continue
        if kind == 16:
            return None
        checksum = handlers[kind](checksum ^ kind, value)
    return checksum


records = st.lists(st.tuples(st.integers(0, 20), st.binary(max_size=12)), max_size=12).map(
    lambda items: b"".join(bytes([kind, len(value)]) + value for kind, value in items))
