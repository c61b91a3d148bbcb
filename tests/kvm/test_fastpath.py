"""The C fast path (pyvmm.run.fast.FastLoop) against the Python loop, guest by guest.

A device gets the fast path by declaring its registers (posted writes,
cached reads): the tests below use the platform's own and a user's device.

Each tiny guest that ends by itself runs once on VcpuLoop and once on
FastLoop; the serial output, the result, the UART's registers and counters,
the per-port access counters and the test devices' logs must be identical,
and the fast path's exits plus its coalesced writes must add up to the
Python loop's exits. Counters that depend on timing (LSR polls in a
TSC-timed wait) are compared without the polls.
"""

import struct

import pytest
from example_devices import Recorder

from pyvmm import guests
from pyvmm.config import VmConfig
from pyvmm.run.fast import FastLoop
from pyvmm.loader import LoadOptions
from pyvmm.machine import Machine, read_kernel

COM1, LSR_PORT = 0x3F8, 0x3FD
UART_COUNTERS = ("bytes_transmitted", "bytes_received", "input_bytes_dropped", "overruns")


def exits_devices():
    return [("port", 0x500, 0x10, Recorder({0x1: 0xA1, 0x2: 0xB2B1, 0x4: 0xC4C3C2C1, 0xD: 0x7E, 0xF: 2})),
            ("mmio", 0xD0000000, 0x1000, Recorder({0x10: 0xD4D3D2D1, 0x20: 0xE1}))]


def flood_image(count):
    with open(guests.path("serial_flood.bin"), "rb") as f:
        image = bytearray(f.read())
    struct.pack_into("<I", image, 0x24, count)
    return bytes(image)


def run(name, fast, stdin=b"", devices=None, image=None, raw_mode=None, timeout=30, **config):
    """Runs guest `name` on the Python or the fast loop; returns everything observable."""
    if raw_mode is None:
        raw_mode = {"real.bin": "real", "long.bin": "long"}.get(name)
    devices = devices() if devices else []
    vm_config = VmConfig(kernel=guests.path(name), serial="buffer", raw_mode=raw_mode, timeout=timeout,
                         **config)
    kernel, options = read_kernel(vm_config)
    with Machine(vm_config, image or kernel, options) as machine:
        for bus, base, length, device in devices:
            getattr(machine, f"add_{bus}_device")(base, length, device)
        if stdin:
            machine.serial.feed(stdin)
        if fast:
            machine.config.exit_path = "fast"
            result = machine.run()
            assert all(type(loop) is FastLoop and loop.state is not None for loop in machine.loops)
        else:
            machine.config.exit_path = "python"
            result = machine.run()
            assert all(type(loop) is not FastLoop for loop in machine.loops)
        stats = machine.stats
        return {
            "result": (result.status, result.reason, result.message),
            "output": machine.serial_output,
            "uart": machine.serial.register_snapshot(),
            "counters": {name: getattr(machine.serial, name) for name in UART_COUNTERS},
            "reasons": stats.by_reason(),
            "coalesced": stats.coalesced,
            "ports": stats.by_port(),
            "mmio": stats.by_mmio(),
            "devices": [device.log for _, _, _, device in devices if hasattr(device, "log")],
            "handled_in_c": stats.fast,
        }


def as_exits(observed):
    """The record with coalesced writes counted as the I/O exits they replaced."""
    observed = dict(observed, reasons=dict(observed["reasons"]))
    coalesced = observed.pop("coalesced")
    if coalesced:
        observed["reasons"]["io"] = observed["reasons"].get("io", 0) + coalesced
    return observed


def without_polls(observed):
    """The record minus what timing decides: LSR polls and the exit totals they add to."""
    observed = dict(observed)
    observed["ports"] = {key: count for key, count in observed["ports"].items() if key[0] != LSR_PORT}
    observed.pop("reasons")
    return observed


GUESTS = [
    # name, options, whether every counter is timing-independent
    ("hello.bin", {}, True),
    ("status.bin", {"stdin": b"4242\n"}, False),
    ("echo.bin", {"stdin": b"fast path\r\nsecond line\x04ignored"}, False),
    ("compute.elf", {}, True),
    ("real.bin", {}, True),
    ("prot.bin", {}, True),
    ("long.bin", {}, True),
    ("exits.bin", {"devices": exits_devices}, True),
    ("fwcfg.bin", {"cpus": 2, "cmdline": "a b c"}, True),
    ("acpi.bin", {}, True),
    ("serial_flood.bin", {"image": flood_image(3000)}, True),
    ("mbinfo.elf", {}, True),
    ("mbinfo.bin", {}, True),
    ("pvhinfo.elf", {"cmdline": "x y"}, True),
    ("fwcfg-pvh.elf", {"cmdline": "a b c"}, True),
    ("lmboot.bin", {}, True),
    ("reset.bin", {}, True),
    ("replay.bin", {}, True),
    ("gdbtarget.elf", {}, True),
]


@pytest.mark.parametrize("name, options, exact", GUESTS, ids=[guest[0] for guest in GUESTS])
def test_fast_loop_matches_python_loop(name, options, exact):
    python = run(name, fast=False, **options)
    fast = run(name, fast=True, **options)
    if name not in ("exits.bin", "status.bin") and fast["output"]:
        assert fast["handled_in_c"] > 0, "the fast path handled no UART access"
    assert python.pop("handled_in_c") == 0
    fast.pop("handled_in_c")
    assert python["coalesced"] == 0
    python, fast = as_exits(python), as_exits(fast)
    if not exact:
        python, fast = without_polls(python), without_polls(fast)
    assert fast == python


def test_uart_output_in_volume_is_coalesced_without_exits():
    count = 20000
    python = run("serial_flood.bin", fast=False, image=flood_image(count))
    fast = run("serial_flood.bin", fast=True, image=flood_image(count))
    assert fast["output"] == python["output"] and len(fast["output"]) == count
    # after the first budget of fast exits, THR writes stop exiting
    assert count // 2 < fast["coalesced"] < count
    assert fast["reasons"]["io"] + fast["coalesced"] == python["reasons"]["io"]


def test_a_short_greeting_is_not_coalesced():
    # Registering the THR zone would cost a removal (an SRCU grace period)
    # at the next divisor change: a line of output stays on fast exits.
    fast = run("hello.bin", fast=True)
    assert fast["coalesced"] == 0
    assert fast["handled_in_c"] >= 2 * len(fast["output"])        # each byte: an LSR poll, a THR write


def test_smp_guest_matches_with_two_cpus():
    # The boot CPU waits for the AP in TSC-timed loops: compare what does not depend on timing.
    python = run("smp.bin", fast=False, cpus=2)
    fast = run("smp.bin", fast=True, cpus=2)
    for key in ("result", "output", "uart", "counters"):
        assert fast[key] == python[key]
    assert fast["output"] == b"bsp 0\ncpu 1 up\ncpus 2\n"


def test_rtc_guest_matches_up_to_the_clock():
    python = run("rtc.bin", fast=False)
    fast = run("rtc.bin", fast=True)
    for key in ("result", "uart", "counters"):
        assert fast[key] == python[key]
    # Date and time lines may differ by the second that passed between the runs.
    keys = [line.split()[0] for line in python["output"].splitlines()]
    assert [line.split()[0] for line in fast["output"].splitlines()] == keys


def test_flood_output_is_complete_and_in_order():
    count = 20000
    observed = run("serial_flood.bin", fast=True, image=flood_image(count))
    line = b"0123456789abcdef" * 3 + b"0123456789abcde\n"
    assert observed["output"] == (line * (count // 64 + 1))[:count]
    assert observed["counters"]["bytes_transmitted"] == count
    assert observed["ports"][(COM1, "out")] == count + 1          # + the divisor latch write
    assert observed["ports"][(LSR_PORT, "in")] >= count
    assert observed["reasons"]["io"] + observed["coalesced"] == sum(observed["ports"].values())
    assert observed["handled_in_c"] + observed["coalesced"] >= 2 * count
    assert observed["result"][:2] == (1, "debug-exit")


class PostedRecorder(Recorder):
    """A user's device that declares its register 0 posted and 4 cached (and
    publishes what its read of 4 returns)."""

    posted_writes = ((0, 1),)
    cached_reads = ((4, 1),)

    def attach(self, context):
        context.registers.publish(4, 0x33)


def loop_image(count, port, out):
    """Real-mode code: `count` times `out`/`in` al at `port` (summing what comes
    in), then the low byte of the sum to debug-exit."""
    load = 0x7C00
    body = b"\xEE" if out else b"\xEC\x00\xC3"                    # out dx,al | in al,dx; add bl,al
    code = struct.pack("<BHBHB", 0xB9, count, 0xBA, port, 0x31) + b"\xDB"  # mov cx; mov dx; xor bx,bx
    code += b"\xB0\x07" + body + b"\x49\x75" + bytes((256 - len(body) - 3,))  # mov al,7; body; dec cx; jnz
    code += b"\x88\xD8\xE6\xF4\xF4"                                  # mov al,bl; out 0xf4,al; hlt
    assert load                                                      # position independent
    return code


@pytest.mark.parametrize("out", [True, False], ids=["posted-writes", "cached-reads"])
def test_a_users_device_gets_the_fast_path_by_declaring_its_registers(out):
    count = 3000
    devices = lambda: [("port", 0x560, 8, PostedRecorder({4: 0x33}))]   # noqa: E731
    image = loop_image(count, 0x564 if not out else 0x560, out)
    python = run("real.bin", fast=False, image=image, devices=devices, raw_mode="real")
    fast = run("real.bin", fast=True, image=image, devices=devices, raw_mode="real")
    handled, coalesced = fast.pop("handled_in_c"), fast["coalesced"]
    python.pop("handled_in_c")
    python_log, fast_log = python.pop("devices"), fast.pop("devices")
    assert as_exits(fast) == as_exits(python)
    status = ((0 if out else 0x33 * count) & 0xFF) << 1 | 1
    assert fast["result"][:2] == (status, "debug-exit")
    if out:
        assert fast_log == python_log == [[("write", 0, b"\x07")] * count]
        assert handled + coalesced == count and coalesced > count // 2     # a zone after volume
    else:
        assert python_log == [[("read", 4, 1)] * count]
        assert fast_log == [[]] and handled == count                       # C answered every read


def test_hooks_select_the_python_loop():
    config = VmConfig(kernel=guests.path("hello.bin"), serial="buffer", timeout=20)
    seen = []
    with Machine(config) as machine:
        machine.add_hook(lambda event: seen.append(event.port), reasons={"io"})
        assert not FastLoop.supported(machine)
        machine.config.exit_path = "fast"
        result = machine.run()
        assert type(machine.loops[0]) is not FastLoop
        assert machine.serial_output == b"Hello from a pyvmm guest!\n"
    assert result.reason == "halt" and seen.count(COM1) == 27


def test_input_fed_during_the_run_reaches_a_polling_guest():
    # echo.bin polls LSR in C while no input is there; input fed from another
    # thread must make the published LSR stale-free (the lock wrapper republishes).
    import threading

    config = VmConfig(kernel=guests.path("echo.bin"), serial="buffer", timeout=30)
    with Machine(config) as machine:
        feeder = threading.Timer(0.3, machine.serial.feed, args=(b"late input\x04",))
        feeder.start()
        machine.config.exit_path = "fast"
        result = machine.run()
        feeder.join()
        assert machine.serial_output == b"late input\nbye\n"
        assert result.reason == "halt"
        assert machine.stats.by_port()[(LSR_PORT, "in")] > 20     # it polled, in C
        assert machine.stats.fast > 20


def test_timeout_stops_a_guest_spinning_in_fast_exits():
    # N = 2^32 - 1 bytes: far more than the timeout allows.
    config = VmConfig(kernel=guests.path("serial_flood.bin"), serial="null", raw_mode="protected",
                      timeout=0.5)
    with Machine(config, flood_image(0xFFFFFFFF), LoadOptions(raw_mode="protected")) as machine:
        machine.config.exit_path = "fast"
        result = machine.run()
        assert (result.status, result.reason) == (124, "timeout")
        assert machine.serial.bytes_transmitted > 0
        assert machine.stats.by_port()[(COM1, "out")] == machine.serial.bytes_transmitted + 1


def rep_outsb_image(count, port):
    """Real-mode code: `rep outsb` of `count` letters to `port`, then debug-exit 0."""
    load = 0x7C00
    code = struct.pack("<BHBHBH", 0xBE, 0, 0xB9, count, 0xBA, port) + b"\xF3\x6E\xB0\x00\xE6\xF4\xF4"
    code = struct.pack("<BH", 0xBE, load + len(code)) + code[3:]          # SI: the text after the code
    text = bytes(65 + i % 26 for i in range(count))
    return code + text, text


def test_string_output_longer_than_the_ring_loses_nothing():
    # The ring holds about 170 writes; a longer `rep outsb` must exit when it
    # is full and go on, with every byte delivered once and in order.
    port = 0xE9                                              # debugcon: a posted-write zone
    image, text = rep_outsb_image(1000, port)
    config = VmConfig(serial="buffer", raw_mode="real", timeout=30)
    with Machine(config, image, LoadOptions(raw_mode="real")) as machine:
        result = machine.run()
        assert (result.status, result.reason) == (1, "debug-exit")
        assert machine.serial_output == text
        assert 0 < machine.stats.coalesced < len(text)       # some writes found the ring full
        assert machine.stats.by_port()[(port, "out")] == len(text)


@pytest.mark.parametrize("cpus", [2, 3])
def test_every_vcpu_output_arrives_once_and_in_order(cpus):
    """All vCPUs write to THR at once while the supervisor and the vCPUs
    flush: each CPU's stream must come out whole and in its own order."""
    observed = run("smp_flood.bin", fast=True, cpus=cpus, timeout=120)
    assert observed["result"][:2] == (cpus << 1 | 1, "debug-exit")
    output = observed["output"]
    for cpu in range(cpus):
        stream = bytes(byte for byte in output if byte & 0xE0 == 0x80 | cpu << 5)
        assert stream == bytes(0x80 | cpu << 5 | i & 31 for i in range(20000)), f"CPU {cpu}"
    assert output.endswith(f"\ncpus {cpus}\n".encode())
