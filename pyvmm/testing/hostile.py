"""Tiny hostile guests, as flat images for raw protected mode (LoadOptions(raw_mode="protected")):
what a soak (bench/soak) and the hardening tests run to show that a guest cannot grow the VMM.

    port_scan_image()          `in` of 1, 2 and 4 bytes, then `out` of zeros, on all 65536 ports
                               (the debug-exit ports skipped), then debug-exit 0
    mmio_scan_image(count)     `count` 4-byte reads at ever new addresses from 0xd0000000
                               (the MMIO hole: no device), then debug-exit 0
    serial_flood_image(count)  the bundled serial_flood.bin patched to print `count` bytes
                               (0xffffffff: for ever, as far as a test is concerned)
"""

import struct

from .. import guests

DEBUG_EXIT_0 = bytes.fromhex("30c0e6f4f4")         # xor al, al; out 0xf4, al; hlt


def port_scan_image():
    return bytes.fromhex(
        "31d2"          # 00: xor edx, edx
        "6681faf400"    # 02: cmp dx, 0xf4
        "7207"          # 07: jb 10
        "6681faf700"    # 09: cmp dx, 0xf7
        "760a"          # 0e: jbe 1a (next)
        "ec66eded"      # 10: in al, dx; in ax, dx; in eax, dx
        "31c0"          # 14: xor eax, eax
        "ee66efef"      # 16: out dx, al; out dx, ax; out dx, eax
        "6642"          # 1a: inc dx
        "75e4") + DEBUG_EXIT_0   # 1c: jnz 02


def mmio_scan_image(count, base=0xD0000000, stride=8):
    code = b"\xB9" + struct.pack("<I", count) + b"\xBE" + struct.pack("<I", base)   # mov ecx; mov esi
    body = b"\x8B\x06" + b"\x83\xC6" + bytes((stride,)) + b"\x49"                  # mov eax,[esi]; add esi; dec ecx
    return code + body + b"\x75" + bytes((256 - len(body) - 2,)) + DEBUG_EXIT_0     # jnz


def serial_flood_image(count):
    with open(guests.path("serial_flood.bin"), "rb") as f:
        image = bytearray(f.read())
    struct.pack_into("<I", image, 0x24, count)
    return bytes(image)
