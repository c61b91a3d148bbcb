"""Each bundled tiny guest boots under KVM with its expected output and status."""

from hypothesis import given, settings, strategies as st

from pyvmm.run.stop import STATUS_OK

FNV_OFFSET, FNV_PRIME = 0xCBF29CE484222325, 0x100000001B3


def expected_compute_line():
    digest = FNV_OFFSET
    for i in range(4096):
        digest = ((digest ^ ((i * 7 + 3) & 0xFF)) * FNV_PRIME) & (2**64 - 1)
    total = sum(i * i * i for i in range(10000)) & (2**64 - 1)
    return digest, f"fnv1a=0x{digest:016x} sum={total}\n".encode()


def test_hello_prints_greeting_and_halts(boot):
    result, output, stats = boot("hello.bin")
    assert output == b"Hello from a pyvmm guest!\n"
    assert (result.status, result.reason) == (STATUS_OK, "halt")
    # One more THR-port write than bytes printed: the divisor latch (DLAB=1).
    assert stats.by_port()[(0x3F8, "out")] == len(output) + 1
    assert stats.by_port()[(0x3FD, "in")] >= len(output)


@settings(max_examples=15, deadline=None)
@given(value=st.integers(min_value=0, max_value=2**31 - 1))
def test_status_guest_exits_with_the_chosen_value(boot, value):
    result, output, _ = boot("status.bin", stdin=b"%d\n" % value)
    assert result.reason == "debug-exit"
    assert result.status == (value << 1) | 1
    assert output == b""


@settings(max_examples=10, deadline=None)
@given(text=st.binary(max_size=200).map(lambda data: data.replace(b"\x04", b"")))
def test_echo_guest_returns_input_until_terminator(boot, text):
    result, output, _ = boot("echo.bin", stdin=text + b"\x04" + b"ignored")
    assert output == text + b"\nbye\n"
    assert result.reason == "halt"


def test_long_mode_elf_computes_the_expected_result(boot):
    digest, line = expected_compute_line()
    result, output, _ = boot("compute.elf")
    assert output == line
    assert result.status == ((digest & 0x7F) << 1) | 1


def test_real_mode_entry(boot):
    result, output, _ = boot("real.bin", raw_mode="real")
    assert output == b"real\n"
    assert result.status == (0x10 << 1) | 1


def test_protected_mode_entry(boot):
    result, output, _ = boot("prot.bin", raw_mode="protected")
    assert output == b"protected\n"
    assert result.status == (0x20 << 1) | 1


def test_long_mode_entry(boot):
    result, output, _ = boot("long.bin", raw_mode="long")
    assert output == b"long\n"
    assert result.status == (0x30 << 1) | 1


def test_long_mode_guest_entered_in_protected_mode_does_not_pass(boot):
    # The mode checks are real: 64-bit code started in 32-bit mode must not
    # report success.
    result, output, _ = boot("long.bin", raw_mode="protected", timeout=5)
    assert result.status != (0x30 << 1) | 1
    assert output != b"long\n"
