"""A command line that is not UTF-8: every consumer encodes it as the loaders do.

The host hands pyvmm argv bytes; Python decodes undecodable bytes to lone
surrogates (PEP 383, surrogateescape). The loaders put the original bytes
back into guest memory; fw_cfg (PVH and bzImage kernels read the command
line there too) must give the guest the very same bytes.
"""

import struct

import pytest
from hypothesis import given, strategies as st

from pyvmm.arch.x86_64 import layout
from pyvmm.config import ConfigError, VmConfig
from pyvmm.devices import Bus, FwCfg
from pyvmm.loader import LoaderError, LoadOptions, load_kernel
from pyvmm.memory import GuestMemory

FW_CFG_CMDLINE_SIZE, FW_CFG_CMDLINE_DATA = 0x14, 0x15
ARGV_BYTES = st.binary(max_size=64).filter(lambda data: b"\0" not in data)


def fw_cfg_cmdline(cmdline):
    bus = Bus.port_io()
    bus.register(0x510, 2, FwCfg(1 << 30, 1, cmdline))
    bus.write(0x510, struct.pack("<H", FW_CFG_CMDLINE_SIZE))
    size = struct.unpack("<I", bytes(bus.read(0x511, 1)[0] for _ in range(4)))[0]
    bus.write(0x510, struct.pack("<H", FW_CFG_CMDLINE_DATA))
    return bytes(bus.read(0x511, 1)[0] for _ in range(size))


@given(raw=ARGV_BYTES)
def test_fw_cfg_gives_the_guest_the_argv_bytes(raw):
    as_argv = raw.decode("utf-8", "surrogateescape")     # what sys.argv holds
    assert fw_cfg_cmdline(as_argv) == raw + b"\0"


@given(raw=ARGV_BYTES)
def test_loader_and_fw_cfg_agree(raw):
    as_argv = raw.decode("utf-8", "surrogateescape")
    with GuestMemory(layout.ram_ranges(16 << 20)) as memory:
        spec = load_kernel(_aout_multiboot(), memory, LoadOptions(cmdline=as_argv))
        info = spec.regs["rbx"]
        cmdline_addr = memory.read_u32(info + 16)
        assert memory.read(cmdline_addr, len(raw) + 1) == raw + b"\0"
    assert fw_cfg_cmdline(as_argv) == raw + b"\0"


def _aout_multiboot():
    magic, flags = 0x1BADB002, 1 << 16
    header = struct.pack("<III", magic, flags, -(magic + flags) & 0xFFFFFFFF)
    return header + struct.pack("<5I", 0x100000, 0x100000, 0, 0, 0x100000 + 32) + b"\xf4"


def test_a_command_line_no_encoding_can_carry_is_a_config_error():
    # Only Python code can make one: a surrogate that is not an escaped byte.
    with pytest.raises(ConfigError, match="command line .* cannot be encoded"):
        VmConfig(cmdline="a\ud800b").validate()
    with pytest.raises(LoaderError, match="command line .* cannot be encoded"):
        with GuestMemory(layout.ram_ranges(16 << 20)) as memory:
            load_kernel(_aout_multiboot(), memory, LoadOptions(cmdline="a\ud800b"))


def test_argv_style_command_lines_are_valid_configs():
    VmConfig(cmdline=b"abc\xff".decode("utf-8", "surrogateescape")).validate()
