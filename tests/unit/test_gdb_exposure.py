"""The gdb stub on an address other hosts can reach: a warning, since gdb's protocol has no authentication."""

import pytest

from pyvmm.gdb.stub import GdbStub


def listen(endpoint):
    stub = GdbStub(None, endpoint)
    stub.close()
    return stub


@pytest.mark.parametrize("endpoint", ["0.0.0.0:0", "[::]:0"])
def test_a_public_address_is_warned_about(capsys, endpoint):
    listen(endpoint)
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("warning: the gdb stub listens on ")
    assert "no authentication" in lines[0] and "other hosts" in lines[0]


@pytest.mark.parametrize("endpoint", ["127.0.0.1:0", "localhost:0", "[::1]:0", "127.0.0.2:0"])
def test_loopback_addresses_are_not(capsys, endpoint):
    listen(endpoint)
    assert capsys.readouterr().err == ""
