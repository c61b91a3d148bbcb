"""Kernels over pyvmm's usual boot-data addresses run: the structures moved out of their way.

Each of these was refused before ("would overlap pyvmm's boot stack",
"would overwrite pyvmm's boot tables"); QEMU runs such kernels.
"""

import pytest

from pyvmm import guests
from pyvmm.arch.x86_64 import layout
from pyvmm.config import VmConfig
from pyvmm.loader import LoadOptions
from pyvmm.machine import Machine

STATUS_2A = (0x2A << 1) | 1
# push 0x2a; pop (e/r)ax; mov ecx, 0x18; mov ds, ecx (a GDT read); out 0xf4, al; hlt
USES_STACK_AND_GDT = bytes.fromhex("6a2a58b9180000008ed9e6f4f4")


def real_mode_stack_probe():
    """A 4 KiB real-mode binary for 0x8000 that jumps to 0x8fe8 and pushes
    there: with SP at pyvmm's usual 0x8ff0, the push would overwrite its own
    `out` at 0x8fee before it runs."""
    image = bytearray(b"\xf4" * 0x1000)
    image[0:3] = bytes.fromhex("e9e50f")                # jmp 0x8fe8
    image[0xFE8:0xFF1] = bytes.fromhex("6a2a58909090e6f4f4")  # push; pop ax; nops; out; hlt
    return bytes(image)


def run_raw(code, mode, load_addr, size):
    image = code + b"\xf4" * (size - len(code))
    config = VmConfig(serial="buffer", raw_mode=mode, load_addr=load_addr, timeout=20)
    with Machine(config, image, LoadOptions(raw_mode=mode, load_addr=load_addr)) as machine:
        kernel = (load_addr, load_addr + size)
        placed = {what: (start, end) for start, end, what in machine.boot.regions
                  if what != "the kernel"}
        for start, end in placed.values():
            assert end <= kernel[0] or kernel[1] <= start
        return machine.run(), placed


@pytest.mark.parametrize("mode", ["protected", "long"])
def test_a_binary_over_the_gdt_page_tables_and_stack_runs(mode):
    result, placed = run_raw(USES_STACK_AND_GDT, mode, 0x500, 0x8800)
    assert (result.status, result.reason) == (STATUS_2A, "debug-exit"), result.message
    assert placed["pyvmm's GDT and IDT"][0] >= 0x8D00
    assert placed["pyvmm's boot stack"][0] >= 0x8D00


def test_a_real_mode_binary_over_the_stack_page_gets_a_stack_elsewhere():
    result, placed = run_raw(real_mode_stack_probe(), "real", 0x8000, 0x1000)
    assert (result.status, result.reason) == (STATUS_2A, "debug-exit"), result.message
    start, end = placed["pyvmm's boot stack"]
    assert end <= 0x8000 and start >= layout.BOOT_DATA_LOW[0]


def test_the_low_multiboot_guest_gets_its_info_elsewhere(tmp_path):
    module = tmp_path / "m1.bin"
    module.write_bytes(b"low module")
    config = VmConfig(kernel=guests.path("mbinfo-low.elf"), serial="buffer", timeout=20,
                      cmdline="a  b", modules=[f"{module} x"])
    with Machine(config) as machine:
        result = machine.run()
        lines = machine.serial_output.decode().splitlines()
    assert result.status == 1, lines
    assert lines[:4] == ["magic 0x2badb002", "image intact", "bss zero", "flags 0x0000024f"]
    assert f"cmdline {guests.path('mbinfo-low.elf')} a  b" in lines
    assert f"mod 0 cmdline {module} x" in lines
    assert f"mod 0 size 10 aligned 1 head {b'low module'.hex()}" in lines
