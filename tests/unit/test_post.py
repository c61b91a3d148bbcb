"""Unit tests for pyvmm.devices.post (POST-code port 0x80, no KVM)."""

from hypothesis import given
from hypothesis import strategies as st

from pyvmm.devices import Bus, PostCode


class Ticks:
    """A fake monotonic_ns clock advancing 1000 ns per call."""

    def __init__(self):
        self.t = 0

    def __call__(self):
        self.t += 1000
        return self.t


def test_writes_are_recorded_with_timestamps():
    post = PostCode(now=Ticks())
    post.write(0, b"\x12")
    post.write(0, b"\x34")
    assert post.history() == [(1000, 0x12), (2000, 0x34)]
    assert post.total_writes == 2
    assert post.last_value == 0x34


def test_wide_writes_are_little_endian_values():
    post = PostCode(now=Ticks())
    post.write(0, b"\x01\x02")
    post.write(0, b"\x01\x02\x03\x04")
    assert [value for _, value in post.history()] == [0x0201, 0x04030201]


def test_history_is_bounded_but_the_count_is_not():
    post = PostCode(now=Ticks(), history_limit=4)
    for value in range(10):
        post.write(0, bytes([value]))
    assert [value for _, value in post.history()] == [6, 7, 8, 9]
    assert post.total_writes == 10
    stats = post.stats()
    assert stats["writes"] == 10 and stats["last"] == 9 and len(stats["recent"]) == 4


def test_default_history_limit_is_1024():
    post = PostCode(now=Ticks())
    for value in range(1100):
        post.write(0, bytes([value & 0xFF]))
    assert len(post.history()) == 1024
    assert post.total_writes == 1100


def test_reads_return_all_ones_like_qemu_ioport80():
    post = PostCode(now=Ticks())
    post.write(0, b"\x55")
    assert post.read(0, 1) == b"\xff"
    assert post.read(0, 4) == b"\xff" * 4


def test_nothing_recorded_before_the_first_write():
    post = PostCode(now=Ticks())
    assert post.history() == [] and post.total_writes == 0 and post.last_value is None


@given(
    st.lists(
        st.tuples(st.sampled_from([1, 2, 4]), st.booleans(), st.binary(min_size=4, max_size=4)),
        max_size=50,
    )
)
def test_random_accesses_never_raise_and_reads_have_the_right_size(accesses):
    post = PostCode(now=Ticks())
    bus = Bus.port_io()
    bus.register(0x80, 1, post)
    writes = 0
    for size, is_write, data in accesses:
        if is_write:
            bus.write(0x80, data[:size])
            writes += size == 1  # wider accesses straddle the 1-port range
        else:
            assert len(bus.read(0x80, size)) == size
    assert post.total_writes == writes
