"""`--cmdline` with bytes that are not UTF-8 reaches PVH and bzImage kernels unchanged."""

import struct
import subprocess
import sys

from pyvmm import guests

NOT_UTF8 = b"abc\xff x=\xc3("


def pyvmm(*args):
    return subprocess.run([sys.executable, "-m", "pyvmm", "run", *args], capture_output=True,
                          timeout=60)


def test_pvh_kernel_reads_the_bytes_from_fw_cfg():
    result = pyvmm(guests.path("fwcfg-pvh.elf").encode(), b"--cmdline", NOT_UTF8)
    assert b"internal error" not in result.stderr, result.stderr
    assert result.returncode == 1, result.stderr
    assert b"\ncmdline " + NOT_UTF8 + b"\n" in result.stdout
    assert b"\ncmdline_size %d\n" % (len(NOT_UTF8) + 1) in result.stdout


def bzimage(code):
    """A bzImage whose 64-bit entry (protected-mode kernel + 0x200) runs `code`."""
    setup_sects = 4
    setup = bytearray((setup_sects + 1) * 512)
    setup[0x1F1] = setup_sects
    struct.pack_into("<H", setup, 0x1FE, 0xAA55)
    setup[0x200:0x202] = bytes([0xEB, 0x66])          # the header ends at 0x268
    setup[0x202:0x206] = b"HdrS"
    struct.pack_into("<H", setup, 0x206, 0x020F)
    setup[0x211] = 0x01                                # LOADED_HIGH
    struct.pack_into("<I", setup, 0x230, 0x200000)     # kernel_alignment
    setup[0x234] = 1                                   # relocatable
    struct.pack_into("<H", setup, 0x236, 0x03)         # XLF_KERNEL_64
    struct.pack_into("<I", setup, 0x238, 2047)         # cmdline_size
    struct.pack_into("<Q", setup, 0x258, 0x1000000)    # pref_address
    struct.pack_into("<I", setup, 0x260, 0x100000)     # init_size
    return bytes(setup) + b"\x90" * 0x200 + code


def test_bzimage_kernel_boots_with_the_bytes(tmp_path):
    kernel = tmp_path / "bzImage"
    kernel.write_bytes(bzimage(b"\xb0\x2a\xe6\xf4\xf4"))   # mov al, 0x2a; out 0xf4, al; hlt
    result = pyvmm(str(kernel).encode(), b"--cmdline", NOT_UTF8)
    assert b"internal error" not in result.stderr, result.stderr
    assert (result.returncode, result.stderr) == ((0x2A << 1) | 1, b"")
