"""Boot protocols and PC platform: the platform guests under QEMU (TCG) and pyvmm.

Each guest (guests/README.md, "Platform guests") prints what it finds, one
"key value" line at a time, and ends through isa-debug-exit, ACPI power-off
or an i8042 reset. Each test boots it under

    qemu-system-x86_64 -accel tcg ... -m 128 -kernel X [-append ARGS]
        [-initrd "m1 args,m2"] [-smp N] -no-reboot
    python -m pyvmm run X --memory 128M --timeout 60 [--cmdline ARGS]
        [--module "m1 args" --module m2] [--cpus N]

and checks both runs the same way: lines whose content is defined (by the
protocol, or by QEMU as the reference) must equal the expected text, and
so the two runs equal each other; host-specific lines are checked by the
rule documented next to their normaliser below and replaced by a
placeholder; exit statuses must be equal. The QEMU side is checked first,
so a failure there is a broken test or guest, one after it a pyvmm
difference.
"""

import datetime
import os
import re
import sys

import pytest

from pyvmm import guests

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from qemu_runner import run_pyvmm, run_qemu  # noqa: E402

pytestmark = [pytest.mark.qemu, pytest.mark.kvm]

MEMORY_MIB = 128
MIB = 1 << 20
STATUS_EXIT_0 = 1            # outb 0 -> 0xf4
CMDLINE = "foo=bar  baz"      # two spaces: passed on verbatim
LOADER_NAMES = {"qemu": "qemu", "pyvmm": "pyvmm"}
HOSTS = {"qemu": run_qemu, "pyvmm": run_pyvmm}

# Module contents: 100 bytes of a pattern, and 4 bytes (shorter than the
# 16 the guests print).
MODULE_1 = bytes((i * 7 + 3) & 0xFF for i in range(100))
MODULE_2 = b"tiny"
MODULE_1_ARGS = "arg1 arg2=x"


def boot(host, name, **options):
    return HOSTS[host](guests.path(name), memory_mib=options.pop("memory_mib", MEMORY_MIB),
                       **options)


def describe(host, result):
    return f"under {host}: status {result.status}, output:\n{result.text}\nstderr: " \
           f"{result.stderr.decode(errors='replace')[-2000:]}"


def verify(host, result, status, check, *args):
    """Asserts the exit status, then check(result, *args) (which returns the
    normalised lines, or None); a failing rule names the host and shows
    the run."""
    assert result.status == status, describe(host, result)
    try:
        return check(result, *args)
    except (AssertionError, ValueError, IndexError, KeyError) as error:
        raise AssertionError(f"{type(error).__name__}: {error}\n{describe(host, result)}") from None


@pytest.fixture
def modules(tmp_path):
    """(path of module 1, path of module 2); QEMU's -initrd needs paths
    without spaces or commas."""
    paths = []
    for index, data in enumerate((MODULE_1, MODULE_2), 1):
        path = tmp_path / f"module{index}.bin"
        path.write_bytes(data)
        paths.append(str(path))
    assert not any(c in "".join(paths) for c in " ,")
    return paths


# ---------------------------------------------------------------------------
# Host-specific fields: each rule, then the placeholder that replaces it.

def check_memory_map(entries, ram_size):
    """Rule for a multiboot mmap / PVH memmap / e820-like map, given as
    [(base, length, type)]: entries sorted and disjoint, types 1-5; RAM
    (type 1) at 0 of 512-640 KiB, RAM from 1 MiB ending within the top
    4 MiB of the configured size (firmware may reserve some there), no RAM
    in the legacy hole [0xA0000, 1 MiB), and no more RAM than configured."""
    assert entries, "empty memory map"
    end = 0
    for base, length, kind in entries:
        assert 1 <= kind <= 5, f"entry type {kind}"
        assert base >= end, f"entries unsorted or overlapping at {base:#x}"
        end = base + length
    ram = [(base, length) for base, length, kind in entries if kind == 1]
    low = dict(ram)
    assert 512 * 1024 <= low.get(0, 0) <= 640 * 1024, f"low RAM {low.get(0)}"
    assert ram_size - 4 * MIB <= MIB + low.get(MIB, 0) <= ram_size, f"RAM from 1 MiB {low.get(MIB)}"
    assert not any(base < MIB and base + length > 0xA0000 for base, length in ram)
    assert sum(length for _, length in ram) <= ram_size
    return low


def check_path_prefix(text, filename):
    """Rule for a multiboot command line "path args": the path is the one the
    VMM was given, so only its last component is compared (QEMU passes the
    path verbatim; pyvmm may normalise it). Returns "<path> args" ("<path>"
    alone when the text has no space)."""
    path, space, rest = text.partition(" ")
    assert os.path.basename(path) == os.path.basename(filename), f"path {path!r}"
    return "<path>" + space + rest


def parse_map_line(line):
    _, base, length, kind = line.split()
    return int(base, 16), int(length, 16), int(kind)


# ---------------------------------------------------------------------------
# mbinfo.elf / mbinfo.bin: Multiboot v1

def normalise_mbinfo(result, host, kernel, module_paths):
    """Defined: magic, info flags, command line after the kernel path, mods
    count, module command lines after their paths, sizes, page alignment
    (the header asks for it) and contents. Host-specific, by rule:
    mem_lower/mem_upper (equal to the RAM mmap entries at 0 and at 1 MiB,
    check_memory_map), the mmap lines (check_memory_map), the loader name
    ("qemu" / "pyvmm"), the path prefixes (check_path_prefix)."""
    lines = result.lines
    mmap = [parse_map_line(line) for line in lines if line.startswith("mmap ")]
    low = check_memory_map(mmap, MEMORY_MIB * MIB)
    normalised = []
    for line in lines:
        key, _, value = line.partition(" ")
        if key == "mem_lower":
            assert int(value) * 1024 == low[0], line
            normalised.append("mem_lower <rule>")
        elif key == "mem_upper":
            assert int(value) * 1024 == low[MIB], line
            normalised.append("mem_upper <rule>")
        elif key == "mmap":
            if "mmap <rule>" not in normalised:
                normalised.append("mmap <rule>")
        elif key == "cmdline":
            normalised.append("cmdline " + check_path_prefix(value, kernel))
        elif key == "loader":
            assert value == LOADER_NAMES[host], line
            normalised.append("loader <rule>")
        elif key == "mod" and value.split(" ")[1] == "cmdline":
            index, _, text = value.split(" ", 2)
            normalised.append(f"mod {index} cmdline "
                              + check_path_prefix(text, module_paths[int(index)]))
        else:
            normalised.append(line)
    return normalised


def expected_mbinfo(cmdline, module_specs):
    lines = ["magic 0x2badb002",
             "flags 0x0000024f",      # mem, boot_device, cmdline, mods, mmap, loader name
             "mem_lower <rule>", "mem_upper <rule>",
             "cmdline <path> " + cmdline,
             "loader <rule>",
             "mmap <rule>",
             f"mods {len(module_specs)}"]
    for index, (args, data) in enumerate(module_specs):
        lines.append(f"mod {index} cmdline <path>" + (" " + args if args else ""))
        lines.append(f"mod {index} size {len(data)} aligned 1 head {data[:16].hex()}")
    return lines


@pytest.mark.parametrize("name", ["mbinfo.elf", "mbinfo.bin"])
def test_multiboot_info_matches_qemu(name, modules):
    specs = [f"{modules[0]} {MODULE_1_ARGS}", modules[1]]
    want = expected_mbinfo(CMDLINE, [(MODULE_1_ARGS, MODULE_1), ("", MODULE_2)])
    for host in HOSTS:
        result = boot(host, name, cmdline=CMDLINE, modules=specs)
        got = verify(host, result, STATUS_EXIT_0, normalise_mbinfo, host, name, modules)
        assert got == want, describe(host, result)


def test_multiboot_without_arguments_or_modules_matches_qemu():
    """QEMU passes "path " (with the space) when -append is empty."""
    want = expected_mbinfo("", [])
    for host in HOSTS:
        result = boot(host, "mbinfo.elf")
        got = verify(host, result, STATUS_EXIT_0, normalise_mbinfo, host, "mbinfo.elf", [])
        assert got == want, describe(host, result)


# ---------------------------------------------------------------------------
# mbinfo-low.elf: the same program linked at 0x8000, its image and bss over
# 0x8000-0xdc50, where loaders put their boot data (QEMU: the memory map at
# 0x9000 and the info structure at 0x9500; pyvmm: its stack page and info).

LOW_CHECKS = ["magic 0x2badb002", "image intact", "bss zero"]


def test_a_multiboot_kernel_at_0x8000_runs_as_under_qemu(modules):
    """Both load the image intact with its bss zeroed and enter it with the
    magic; the guest exits through a 1-byte write to 0xf4 (status 1) under
    both. QEMU writes its info structure at 0x9500 before it copies the
    kernel, so the kernel overwrites it and EBX points into the kernel's own
    bytes ("info inside the image"). pyvmm moves its info out of the
    kernel's way: the low kernel reads exactly what QEMU gives the same
    program linked at 1 MiB."""
    specs = [f"{modules[0]} {MODULE_1_ARGS}", modules[1]]
    qemu = boot("qemu", "mbinfo-low.elf", cmdline=CMDLINE, modules=specs)
    assert (qemu.status, qemu.lines) == (STATUS_EXIT_0, LOW_CHECKS + ["info inside the image"]), \
        describe("qemu", qemu)
    pyvmm = boot("pyvmm", "mbinfo-low.elf", cmdline=CMDLINE, modules=specs)
    assert pyvmm.status == qemu.status and pyvmm.lines[:3] == qemu.lines[:3], \
        describe("pyvmm", pyvmm)
    got = verify("pyvmm", pyvmm, STATUS_EXIT_0, normalise_mbinfo, "pyvmm", "mbinfo-low.elf",
                 modules)
    high = boot("qemu", "mbinfo.elf", cmdline=CMDLINE, modules=specs)
    reference = verify("qemu", high, STATUS_EXIT_0, normalise_mbinfo, "qemu", "mbinfo.elf",
                       modules)
    assert reference == expected_mbinfo(CMDLINE, [(MODULE_1_ARGS, MODULE_1), ("", MODULE_2)])
    assert got == LOW_CHECKS + reference[1:], describe("pyvmm", pyvmm)


# ---------------------------------------------------------------------------
# pvhinfo.elf: PVH (QEMU boots it through its pvh.bin option ROM)

def normalise_pvhinfo(result, module_paths):
    """Defined: magic, version (QEMU 7.2 gives 1), flags, the command line
    (no kernel path in PVH), nr_modules, module sizes and contents, "rsdp
    ok" (the pointer leads to an "RSD PTR " signature). Host-specific, by
    rule: the memmap (check_memory_map, and memmap_entries counts it); a
    command line "absent" (cmdline_paddr 0) equals an empty one; a module's
    command line: QEMU has none for its one -initrd module, pyvmm may give
    the module's path (check_path_prefix) -- absent, empty and "<path>"
    all normalise to "absent"."""
    lines = result.lines
    memmap = [parse_map_line(line) for line in lines if line.startswith("memmap ")]
    check_memory_map(memmap, MEMORY_MIB * MIB)
    normalised = []
    for line in lines:
        key, _, value = line.partition(" ")
        if key == "memmap_entries":
            assert int(value) == len(memmap), line
            normalised.append("memmap <rule>")
        elif key == "memmap":
            pass
        elif key == "cmdline" and value in ("", "absent"):
            normalised.append("cmdline absent")
        elif key == "mod" and value.split(" ")[1] == "cmdline":
            index, _, text = value.split(" ", 2)
            if text not in ("", "absent"):
                assert check_path_prefix(text, module_paths[int(index)]) == "<path>", line
            normalised.append(f"mod {index} cmdline absent")
        else:
            normalised.append(line)
    return normalised


def expected_pvhinfo(cmdline, module_data):
    lines = ["magic 0x336ec578", "version 1", "flags 0x00000000",
             "cmdline " + (cmdline or "absent"), f"nr_modules {len(module_data)}"]
    for index, data in enumerate(module_data):
        lines.append(f"mod {index} size {len(data)} head {data[:16].hex()}")
        lines.append(f"mod {index} cmdline absent")
    return lines + ["memmap <rule>", "rsdp ok"]


def test_pvh_start_info_matches_qemu(modules):
    """One module without arguments: all QEMU's -initrd can give a PVH kernel."""
    want = expected_pvhinfo(CMDLINE, [MODULE_1])
    for host in HOSTS:
        result = boot(host, "pvhinfo.elf", cmdline=CMDLINE, modules=[modules[0]])
        got = verify(host, result, STATUS_EXIT_0, normalise_pvhinfo, modules)
        assert got == want, describe(host, result)


def test_pvh_without_arguments_or_modules_matches_qemu():
    want = expected_pvhinfo("", [])
    for host in HOSTS:
        result = boot(host, "pvhinfo.elf")
        got = verify(host, result, STATUS_EXIT_0, normalise_pvhinfo, [])
        assert got == want, describe(host, result)


# ---------------------------------------------------------------------------
# smp.bin: APs started by the BSP through the local APIC (INIT, SIPI, SIPI)

@pytest.mark.parametrize("cpus", [1, 2, 4])
def test_smp_startup_matches_qemu(cpus):
    """AP lines come in any order: compared sorted. APIC IDs 0..N-1 are
    defined here (QEMU's and pyvmm's topology for N CPUs)."""
    want = sorted(["bsp 0", *(f"cpu {i} up" for i in range(1, cpus)), f"cpus {cpus}"])
    for host in HOSTS:
        result = boot(host, "smp.bin", cpus=cpus)
        assert sorted(result.lines) == want, describe(host, result)
        assert result.lines[-1] == f"cpus {cpus}", describe(host, result)
        assert result.status == (cpus << 1) | 1, describe(host, result)


# ---------------------------------------------------------------------------
# irqecho.bin: the UART's receive interrupt through the 8259 (ISA IRQ 4)

@pytest.mark.parametrize("text", [b"hello, irq\n", b"0123456789abcdef" * 3 + b"\n"])
def test_uart_interrupt_echo_matches_qemu(text):
    """Input goes in only after the guest's prompt, so every byte is taken
    by the interrupt handler (a polling guest would not see it: it sleeps
    in hlt). The longer line overruns one 16-byte FIFO load."""
    want = b"irqecho ready\n" + text + b"\nbye\n"
    for host in HOSTS:
        result = boot(host, "irqecho.bin", stdin=text + b"\x04after", prompt=b"ready\n")
        assert result.output == want, describe(host, result)
        assert result.status == STATUS_EXIT_0, describe(host, result)


# ---------------------------------------------------------------------------
# fwcfg.bin: QEMU's firmware configuration device

def normalise_fwcfg(result):
    """Defined: signature "QEMU", RAM size, CPU count, and the command line
    items as QEMU has them: none for a multiboot kernel (cmdline_size 0),
    -append for a PVH one (QEMU sets keys 0x14/0x15 only for Linux and PVH
    kernels, in 7.2 as in current releases).
    Host-specific, by rule: the ID has bit 0 (traditional interface) set,
    the DMA bit is free (QEMU 3, pyvmm 1); "files N" is followed by
    min(N, 64) "file <key> <size> <name>" lines with distinct names and
    keys of at least 0x20 (the contents are each VMM's own)."""
    normalised = []
    files = []
    for line in result.lines:
        key, _, value = line.partition(" ")
        if key == "id":
            assert int(value, 16) & 1, line
            normalised.append("id <traditional>")
        elif key == "files":
            count = int(value)
            normalised.append("files <rule>")
        elif key == "file":
            selector, size, name = value.split(" ", 2)
            assert int(selector, 16) >= 0x20 and int(size) >= 0 and name, line
            files.append(name)
        else:
            normalised.append(line)
    if "files <rule>" in normalised:
        assert len(files) == min(count, 64) and len(set(files)) == len(files), files
    return normalised


# QEMU fills keys 0x14/0x15 for PVH (and Linux) kernels, not for multiboot.
@pytest.mark.parametrize("name, cmdline_lines", [
    ("fwcfg.bin", ["cmdline_size 0", "cmdline "]),
    ("fwcfg-pvh.elf", [f"cmdline_size {len(CMDLINE) + 1}", f"cmdline {CMDLINE}"]),
])
def test_fw_cfg_matches_qemu(name, cmdline_lines):
    want = ["signature QEMU", "id <traditional>", f"ram_size 0x{MEMORY_MIB * MIB:016x}",
            "nb_cpus 2", *cmdline_lines, "files <rule>"]
    for host in HOSTS:
        result = boot(host, name, cmdline=CMDLINE, cpus=2)
        got = verify(host, result, STATUS_EXIT_0, normalise_fwcfg)
        assert got == want, describe(host, result)


# ---------------------------------------------------------------------------
# acpi.bin: RSDP, root table, FADT, DSDT \_S5, power-off through PM1a_CNT

REQUIRED_TABLES = ["FACP ok", "APIC ok", "DSDT ok"]


def check_acpi(result):
    """Defined: the RSDP is found and valid, the root and every table it
    lists have valid checksums, FACP, APIC and DSDT among them, the run
    ends with "s5 N" and then powers off (status 0 under both).
    Host-specific, by rule: the RSDP revision and so RSDT or XSDT; the
    other tables (QEMU also has HPET, WAET...); PM1a_CNT's port (nonzero);
    SLP_TYP (0-7)."""
    lines = result.lines
    assert re.fullmatch(r"rsdp ok \d+", lines[0]), lines[0]
    assert lines[1] in ("RSDT ok", "XSDT ok"), lines[1]
    tables = lines[2:-2]
    assert all(re.fullmatch(r"[A-Z0-9_]{4} ok", line) for line in tables), tables
    assert all(table in tables for table in REQUIRED_TABLES), tables
    assert re.fullmatch(r"pm1a_cnt 0x[0-9a-f]{8}", lines[-2]) and int(lines[-2][9:], 16), lines[-2]
    assert re.fullmatch(r"s5 [0-7]", lines[-1]), lines[-1]


def test_acpi_tables_and_poweroff_match_qemu():
    for host in HOSTS:
        verify(host, boot(host, "acpi.bin"), 0, check_acpi)


# ---------------------------------------------------------------------------
# reset.bin: i8042 reset line (QEMU -no-reboot exits; pyvmm ends the run)

def test_i8042_reset_matches_qemu():
    for host in HOSTS:
        result = boot(host, "reset.bin")
        assert result.output == b"reset\n", describe(host, result)
        assert result.status == 0, describe(host, result)


# ---------------------------------------------------------------------------
# rtc.bin: MC146818 RTC and the CMOS memory-size bytes

def cmos_memory_words(ram_size):
    """PC firmware's formula (QEMU pc_cmos_init): 0x30/0x31 = KiB of RAM
    above 1 MiB, at most 65535; 0x34/0x35 = 64 KiB units above 16 MiB
    (RAM below 4 GiB; both sizes here are below it)."""
    return min((ram_size - MIB) // 1024, 0xFFFF), max(ram_size - 16 * MIB, 0) // (64 * 1024)


def normalise_rtc(result):
    """Defined: status register B (0x02: 24-hour, BCD), the memory bytes
    (cmos_memory_words, exact). Host-specific, by rule: the date is today
    in UTC within a day (QEMU's default -rtc base=utc), the time a valid
    24-hour time."""
    now = datetime.datetime.now(datetime.timezone.utc).date()
    normalised = []
    for line in result.lines:
        key, _, value = line.partition(" ")
        if key == "date":
            date = datetime.date.fromisoformat(value)
            assert abs((date - now).days) <= 1, line
            normalised.append("date <today>")
        elif key == "time":
            assert re.fullmatch(r"([01]\d|2[0-3]):[0-5]\d:[0-5]\d", value), line
            normalised.append("time <valid>")
        else:
            normalised.append(line)
    return normalised


@pytest.mark.parametrize("memory_mib", [128, 32])
def test_rtc_and_cmos_match_qemu(memory_mib):
    words = cmos_memory_words(memory_mib * MIB)
    want = ["status_b 0x02", "date <today>", "time <valid>",
            f"cmos_30 {words[0]}", f"cmos_34 {words[1]}"]
    for host in HOSTS:
        result = boot(host, "rtc.bin", memory_mib=memory_mib)
        got = verify(host, result, STATUS_EXIT_0, normalise_rtc)
        assert got == want, describe(host, result)
