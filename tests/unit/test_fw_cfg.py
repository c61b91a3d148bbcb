"""Unit tests for pyvmm.devices.fw_cfg (QEMU fw_cfg, I/O-port interface).

Keys and formats are spelled out from QEMU's docs/specs/fw_cfg.rst rather
than imported, so the tests pin them down.
"""

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pyvmm.devices import Bus, FwCfg

GIB = 1 << 30


class Guest:
    """Drives an FwCfg through a port bus the way a firmware driver does."""

    def __init__(self, dev):
        self.dev = dev
        self.bus = Bus.port_io()
        self.bus.register(0x510, 2, dev)

    def select(self, key):
        self.bus.write(0x510, struct.pack("<H", key))

    def read(self, count, port=0x511):
        return bytes(self.bus.read(port, 1)[0] for _ in range(count))

    def item(self, key, count):
        self.select(key)
        return self.read(count)

    def directory(self):
        self.select(0x19)
        (count,) = struct.unpack(">I", self.read(4))
        entries = {}
        for _ in range(count):
            size, key, reserved = struct.unpack(">IHH", self.read(8))
            name = self.read(56)
            assert reserved == 0
            assert name.endswith(b"\0")
            entries[name.rstrip(b"\0")] = (size, key)
        return entries


def make(**kwargs):
    args = dict(ram_size=GIB, cpus=2, cmdline="console=ttyS0")
    args.update(kwargs)
    return Guest(FwCfg(**args))


def test_signature_is_selected_after_reset():
    assert make().read(4) == b"QEMU"


def test_signature_item_and_zeros_past_its_end():
    guest = make()
    assert guest.item(0x0000, 8) == b"QEMU\0\0\0\0"


def test_id_advertises_the_traditional_interface_only():
    assert make().item(0x0001, 4) == b"\x01\0\0\0"


def test_ram_size_and_cpu_counts():
    guest = make(ram_size=5 * GIB + 4096, cpus=3, max_cpus=8)
    assert struct.unpack("<Q", guest.item(0x0003, 8)) == (5 * GIB + 4096,)
    assert struct.unpack("<H", guest.item(0x0005, 2)) == (3,)
    assert struct.unpack("<H", guest.item(0x000F, 2)) == (8,)


def test_max_cpus_defaults_to_cpus():
    assert make(cpus=4).item(0x000F, 2) == b"\x04\0"


@given(cmdline=st.text(st.characters(min_codepoint=1, max_codepoint=0x7E), max_size=300))
def test_cmdline_as_qemu_append_provides_it(cmdline):
    guest = make(cmdline=cmdline)
    encoded = cmdline.encode()
    assert struct.unpack("<I", guest.item(0x0014, 4)) == (len(encoded) + 1,)
    assert guest.item(0x0015, len(encoded) + 2) == encoded + b"\0\0"


def test_no_cmdline_items_without_a_cmdline():
    guest = make(cmdline=None)
    assert guest.item(0x0014, 4) == bytes(4)
    assert guest.item(0x0015, 4) == bytes(4)


def test_file_directory_and_file_contents():
    files = {"etc/pyvmm/hello": b"hello, guest\n", "etc/a-first": b"\x01\x02", "opt/empty": b""}
    guest = make(files=files)
    entries = guest.directory()
    # Sorted by name, keys from 0x20 on, as QEMU does for current machines.
    assert entries == {
        b"etc/a-first": (2, 0x20),
        b"etc/pyvmm/hello": (13, 0x21),
        b"opt/empty": (0, 0x22),
    }
    assert guest.item(0x21, 14) == b"hello, guest\n\0"
    assert guest.dev.file_key("etc/pyvmm/hello") == 0x21


def test_directory_exists_and_is_empty_without_files():
    assert make().item(0x0019, 8) == bytes(8)


@given(
    files=st.dictionaries(
        st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1, max_size=55),
        st.binary(max_size=300),
        max_size=8,
    )
)
def test_every_file_is_listed_and_readable(files):
    guest = make(files=files)
    entries = guest.directory()
    assert set(entries) == {name.encode() for name in files}
    assert sorted(key for _, key in entries.values()) == list(range(0x20, 0x20 + len(files)))
    for name, data in files.items():
        size, key = entries[name.encode()]
        assert size == len(data)
        assert guest.item(key, size + 1) == data + b"\0"


@given(key=st.integers(0, 0xFFFF).filter(lambda k: k & 0x3FFF not in {0, 1, 3, 5, 0x0F, 0x14, 0x15, 0x19}))
def test_unknown_and_arch_local_keys_read_zeros(key):
    guest = make()
    assert guest.item(key, 4) == bytes(4)


def test_write_channel_bit_selects_the_same_item():
    assert make().item(0x4000, 4) == b"QEMU"


def test_arch_local_signature_key_is_not_the_signature():
    assert make().item(0x8000, 4) == bytes(4)


def test_selecting_rewinds():
    guest = make()
    assert guest.read(2) == b"QE"
    guest.select(0x0000)
    assert guest.read(4) == b"QEMU"


def test_byte_reads_at_the_selector_port_also_read_data():
    guest = make()
    assert guest.read(2, port=0x510) + guest.read(2) == b"QEMU"


def test_word_reads_return_zero_and_do_not_advance():
    guest = make()
    assert guest.bus.read(0x510, 2) == b"\0\0"
    assert guest.read(4) == b"QEMU"


def test_byte_writes_are_ignored():
    guest = make()
    guest.read(1)
    guest.bus.write(0x510, b"\x03")
    guest.bus.write(0x511, b"\x05")
    assert guest.dev.selected_key == 0
    assert guest.read(3) == b"EMU"


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(files={"x" * 56: b""}),
        dict(files={"": b""}),
        dict(files={"a\0b": b""}),
        dict(files={"etc/x": b"", b"etc/x": b"1"}),
        dict(cmdline="a\0b"),
        dict(cpus=0),
        dict(cpus=4, max_cpus=2),
        dict(ram_size=-1),
    ],
)
def test_bad_configurations_are_refused(kwargs):
    with pytest.raises(ValueError):
        make(**kwargs)


def test_longest_file_name_fits():
    guest = make(files={"n" * 55: b"ok"})
    assert guest.directory() == {b"n" * 55: (2, 0x20)}


@st.composite
def accesses(draw):
    size = draw(st.sampled_from([1, 2]))
    offset = draw(st.integers(0, 2 - size))
    data = draw(st.binary(min_size=size, max_size=size)) if draw(st.booleans()) else None
    return offset, size, data


@given(st.lists(accesses(), max_size=100))
def test_random_accesses_never_raise_and_reads_have_the_right_size(sequence):
    dev = FwCfg(GIB, 2, "console=ttyS0", files={"etc/pyvmm/hello": b"hi"})
    for offset, size, data in sequence:
        if data is None:
            assert len(dev.read(offset, size)) == size
        else:
            dev.write(offset, data)
    dev.write(0, b"\x00\x00")
    assert bytes(dev.read(1, 1)[0] for _ in range(4)) == b"QEMU"
