#!/usr/bin/env python3
"""Where pyvmm's run loop spends its time per port-I/O exit.

A diagnostic for when bench/exit_latency's ratio is over target (pyvmm itself is not modified).
One VM runs bench_exit.bin with a huge N; its exits are handed, in chunks of a few thousand, to
a series of loop variants in rotation: a C KVM_RUN loop (cffi, same process, same VM),
stripped-down Python loops that each add a piece of pyvmm.run.loop.VcpuLoop.run back, and the
real VcpuLoop.run on the calling thread and on a thread of its own, as Machine.run does, plus
two prototypes of a faster loop (c_decode_*: KVM_RUN, decoding and counting in one C call).
Run-to-run noise on this host is +-30%; alternating chunks inside one VM compares variants under
the same conditions. Then each hot-path statement is timed alone with timeit (no KVM, warm).

usage: python bench/runloop_profile.py [--chunk N] [--cycles C] [--thread]
"""

import argparse
import importlib.machinery
import importlib.util
import os
import statistics
import struct
import sys
import threading
import time
import timeit
from types import SimpleNamespace

from pyvmm._kvm import ffi, lib
from pyvmm.config import VmConfig
from pyvmm.devices import Bus
from pyvmm.loader import LoadOptions
from pyvmm.run.loop import VcpuLoop
from pyvmm.run.stats import ExitStats
from pyvmm.machine import Machine

HERE = os.path.dirname(os.path.abspath(__file__))
_loader = importlib.machinery.SourceFileLoader("exit_latency", os.path.join(HERE, "exit_latency"))
bench = importlib.util.module_from_spec(importlib.util.spec_from_loader(_loader.name, _loader))
_loader.exec_module(bench)

KVM_RUN, EXIT_IO, IO_OUT = lib.KVM_RUN, lib.KVM_EXIT_IO, lib.KVM_EXIT_IO_OUT
# Our own kvm_run decoding (pyvmm.run.loop's private names change as it is worked on).
UNION = ffi.offsetof("struct kvm_run", "io")
REASON_OFFSET = ffi.offsetof("struct kvm_run", "exit_reason")
EXIT_HEADER = struct.Struct(f"<I{UNION - REASON_OFFSET - 4}xBBHIQ")  # reason, dir, size, port, count, offset
BYTES = [bytes([value]) for value in range(256)]

HELPERS = r"""
#include <errno.h>
#include <stdint.h>
#include <sys/ioctl.h>
#include <linux/kvm.h>

/* n KVM_RUNs, every exit ignored: the C baseline's loop, callable from Python. */
long run_n(int fd, long n)
{
	for (long i = 0; i < n; i++)
		if (ioctl(fd, KVM_RUN, 0) < 0)
			return -1;
	return n;
}

/* One KVM_RUN, the exit counted in counters[reason] and counters[64 + (port << 1 | direction)].
 * Returns -errno; 0 for an exit Python must decode itself; or, for a single 1/2/4-byte port
 * access: 1 << 52 | direction << 51 | size << 48 | port << 32 | the OUT value. */
int64_t run_exit(int fd, struct kvm_run *run, uint64_t *counters)
{
	if (ioctl(fd, KVM_RUN, 0) < 0)
		return -errno;
	if (run->exit_reason < 64)
		counters[run->exit_reason]++;
	if (run->exit_reason != KVM_EXIT_IO)
		return 0;
	counters[64 + (run->io.port << 1 | run->io.direction)] += run->io.count;
	if (run->io.count != 1 || (run->io.size != 1 && run->io.size != 2 && run->io.size != 4))
		return 0;
	uint32_t value = 0;
	for (int i = run->io.size - 1; i >= 0; i--)
		value = value << 8 | ((uint8_t *)run)[run->io.data_offset + i];
	return (int64_t)1 << 52 | (int64_t)run->io.direction << 51 | (int64_t)run->io.size << 48
		| (int64_t)run->io.port << 32 | value;
}
"""


def build_helpers():
    """The C helpers above as a cffi module in bench/build/ (API mode, like pyvmm's own)."""
    import cffi
    builder = cffi.FFI()
    builder.cdef("long run_n(int fd, long n); int64_t run_exit(int fd, void *run, uint64_t *counters);")
    builder.set_source("_runloop_helpers", HELPERS)
    builder.compile(tmpdir=bench.BUILD, verbose=False)
    sys.path.insert(0, bench.BUILD)
    import _runloop_helpers
    return _runloop_helpers


class Countdown:
    """The no-op device on the benchmark port; its n-th write ends the chunk (stop.requested)."""

    def __init__(self):
        self.left, self.stop = 0, None

    def read(self, offset, size):
        return bytes(size)

    def write(self, offset, data):
        self.left -= 1
        if not self.left:
            self.stop.requested = True


# --- the variants: each handles the next n exits ------------------------------------------------

def c_loop(vm, n):
    """KVM_RUN in a C loop (one cffi call per chunk, not per exit)."""
    if vm.helpers.lib.run_n(vm.vcpu.fd, n) != n:
        raise OSError("KVM_RUN")


def ioctl_only(vm, n):
    """KVM_RUN through cffi from a Python for-loop, nothing else: the floor of any Python loop."""
    fd, ioctl = vm.vcpu.fd, lib.pyvmm_ioctl_value
    for _ in range(n):
        ioctl(fd, KVM_RUN, 0)


def decode_stats(vm, n):
    """+ error check, one unpack of the exit header, the per-reason/per-port counters, checks."""
    fd, ioctl, buf, run_size = vm.vcpu.fd, lib.pyvmm_ioctl_value, vm.vcpu.run_buffer, vm.vcpu.run_size
    unpack, reasons, ports = EXIT_HEADER.unpack_from, vm.stats.reasons, vm.stats.ports
    for _ in range(n):
        if ioctl(fd, KVM_RUN, 0) < 0:
            raise OSError("KVM_RUN")
        reason, direction, size, port, count, offset = unpack(buf, REASON_OFFSET)
        if reason < 64:
            reasons[reason] += 1
        if reason == EXIT_IO:
            key = port << 1 | direction
            ports[key] = ports.get(key, 0) + count
            if not (count == 1 and size in (1, 2, 4) and offset + size <= run_size):
                raise OSError("bad exit")


def lean(vm, n):
    """ioctl, one unpack, bytes(buf[...]) to device.write found in a {port: write} dict.
    No counters, no Bus, no validity checks."""
    fd, ioctl, buf, unpack, stop = vm.vcpu.fd, lib.pyvmm_ioctl_value, vm.vcpu.run_buffer, EXIT_HEADER.unpack_from, vm.stop
    writes = {vm.port: vm.device.write}
    while not stop.requested:
        if ioctl(fd, KVM_RUN, 0) < 0:
            raise OSError("KVM_RUN")
        reason, direction, size, port, count, offset = unpack(buf, REASON_OFFSET)
        if reason == EXIT_IO and count == 1 and direction == IO_OUT:
            writes[port](0, bytes(buf[offset:offset + size]))


def lean_cached(vm, n):
    """lean, handing 1-byte writes over as a preallocated bytes object (no slice, no bytes())."""
    fd, ioctl, buf, unpack, stop = vm.vcpu.fd, lib.pyvmm_ioctl_value, vm.vcpu.run_buffer, EXIT_HEADER.unpack_from, vm.stop
    writes = {vm.port: vm.device.write}
    while not stop.requested:
        if ioctl(fd, KVM_RUN, 0) < 0:
            raise OSError("KVM_RUN")
        reason, direction, size, port, count, offset = unpack(buf, REASON_OFFSET)
        if reason == EXIT_IO and count == 1 and direction == IO_OUT:
            writes[port](0, BYTES[buf[offset]] if size == 1 else bytes(buf[offset:offset + size]))


def lean_bus(vm, n):
    """lean, through Bus.write instead of the dict."""
    fd, ioctl, buf, unpack, stop = vm.vcpu.fd, lib.pyvmm_ioctl_value, vm.vcpu.run_buffer, EXIT_HEADER.unpack_from, vm.stop
    write = vm.bus.write
    while not stop.requested:
        if ioctl(fd, KVM_RUN, 0) < 0:
            raise OSError("KVM_RUN")
        reason, direction, size, port, count, offset = unpack(buf, REASON_OFFSET)
        if reason == EXIT_IO and count == 1 and direction == IO_OUT:
            write(port, bytes(buf[offset:offset + size]))


def c_decode_bus(vm, n):
    """A proposed loop: KVM_RUN, decoding and counting in one C call; Python only dispatches
    to Bus.write (1-byte values as preallocated bytes objects)."""
    fd, run_exit, stop, write = vm.vcpu.fd, vm.helpers.lib.run_exit, vm.stop, vm.bus.write
    run = vm.helpers.ffi.cast("void *", int(ffi.cast("uintptr_t", vm.vcpu.run_pointer)))
    counters = vm.counters
    while not stop.requested:
        code = run_exit(fd, run, counters)
        if code >> 51 == 3:                             # a single OUT
            size = code >> 48 & 7
            write(code >> 32 & 0xFFFF, BYTES[code & 0xFF] if size == 1
                  else (code & 0xFFFFFFFF).to_bytes(size, "little"))
        else:
            raise OSError(f"the prototype handles OUT exits only (code {code:#x})")


def c_decode_dict(vm, n):
    """c_decode_bus, dispatching through a {port: device.write} dict instead of Bus.write."""
    fd, run_exit, stop = vm.vcpu.fd, vm.helpers.lib.run_exit, vm.stop
    run = vm.helpers.ffi.cast("void *", int(ffi.cast("uintptr_t", vm.vcpu.run_pointer)))
    counters, writes = vm.counters, {vm.port: vm.device.write}
    while not stop.requested:
        code = run_exit(fd, run, counters)
        if code >> 51 == 3:                             # a single OUT
            size = code >> 48 & 7
            writes[code >> 32 & 0xFFFF](0, BYTES[code & 0xFF] if size == 1
                                        else (code & 0xFFFFFFFF).to_bytes(size, "little"))
        else:
            raise OSError(f"the prototype handles OUT exits only (code {code:#x})")


def pyvmm_loop(vm, n):
    """pyvmm.run.loop.VcpuLoop.run itself, on this (the main) thread."""
    VcpuLoop(vm.vcpu, vm.bus, None, vm.stop, vm.stats).run()


def pyvmm_thread(vm, n):
    """VcpuLoop.run on its own thread, the main thread waking every 50 ms: what Machine.run does."""
    pyvmm_thread_like(VcpuLoop(vm.vcpu, vm.bus, None, vm.stop, vm.stats).run)


VARIANTS = [c_loop, ioctl_only, decode_stats, lean, lean_cached, lean_bus, c_decode_bus, c_decode_dict,
            pyvmm_loop, pyvmm_thread]


def profile(chunk, cycles, on_thread=False):
    """{variant name: [(wall, CPU) ns per exit of each chunk]}; on_thread: all chunks on one other thread."""
    exits = chunk * cycles * len(VARIANTS) + 1000       # the guest never reaches its debug-exit
    port = bench.BENCH_PORT
    path, image = bench.patched_image(exits)
    times = {variant.__name__: [] for variant in VARIANTS}
    config = VmConfig(kernel=path, raw_mode="protected", serial="buffer", exit_path="python")
    with Machine(config, image=image, options=LoadOptions(raw_mode="protected")) as machine:
        device = Countdown()
        machine.add_port_device(port, 1, device, name="countdown")
        vm = SimpleNamespace(vcpu=machine.vcpus[0], bus=machine.port_bus, device=device, port=port,
                             stats=ExitStats(), helpers=build_helpers())
        vm.counters = vm.helpers.ffi.new("uint64_t[]", 64 + 2 * 65536)

        def cycle_all():
            for cycle in range(cycles):
                shift = cycle % len(VARIANTS)           # rotate the order: no fixed neighbours
                for variant in VARIANTS[shift:] + VARIANTS[:shift]:
                    vm.stop = device.stop = SimpleNamespace(requested=False)
                    device.left = chunk
                    start, cpu = time.monotonic_ns(), time.process_time_ns()   # CPU: all threads
                    variant(vm, chunk)
                    times[variant.__name__].append(((time.monotonic_ns() - start) / chunk,
                                                    (time.process_time_ns() - cpu) / chunk))

        if on_thread:
            pyvmm_thread_like(cycle_all)
        else:
            cycle_all()
    return times


def pyvmm_thread_like(function):
    """Runs function on its own thread while this one wakes every 50 ms, as Machine.run does."""
    thread = threading.Thread(target=function)
    thread.start()
    while thread.is_alive():
        thread.join(0.05)


# --- the hot-path statements alone, no KVM ------------------------------------------------------

def statement_costs(number=200000):
    """[(statement, ns)] on a fake kvm_run page holding a 1-byte OUT exit, caches warm."""
    buf, port = memoryview(bytearray(4096)), 0x560     # any port
    EXIT_HEADER.pack_into(buf, REASON_OFFSET, EXIT_IO, IO_OUT, 1, port, 1, 4096 - 8)
    bus, device = Bus.port_io(), bench.NullDevice()
    bus.register(port, 1, device)
    stats = ExitStats()
    names = dict(buf=buf, ioctl=lib.pyvmm_ioctl_value, KVM_RUN=KVM_RUN, unpack=EXIT_HEADER.unpack_from,
                 ro=REASON_OFFSET, reasons=stats.reasons, ports=stats.ports, reason=EXIT_IO, EXIT_IO=EXIT_IO,
                 IO_OUT=IO_OUT, port=port, direction=IO_OUT, count=1, size=1, offset=4096 - 8,
                 run_size=4096, sizes=(1, 2, 4), data=b"\0", bus_write=bus.write, device=device,
                 writes={port: device.write}, BYTES=BYTES, stop=SimpleNamespace(requested=False))
    statements = [
        ("stop.requested (loop test)", "stop.requested"),
        ("cffi ioctl call, failing syscall (fd -1)", "ioctl(-1, KVM_RUN, 0)"),
        ("ret < 0 test", "0 < 0"),
        ("unpack reason + io header (one Struct)", "r, direction, size, port, count, offset = unpack(buf, ro)"),
        ("reasons[reason] += 1 (with < 64 test)", "if reason < 64: reasons[reason] += 1"),
        ("reason == EXIT_IO test", "reason == EXIT_IO"),
        ("ports[key] counter", "key = port << 1 | direction; ports[key] = ports.get(key, 0) + count"),
        ("validity checks", "count == 1 and size in sizes and offset + size <= run_size"),
        ("direction == IO_OUT test", "direction == IO_OUT"),
        ("bytes(buf[offset:offset + size])", "bytes(buf[offset:offset + size])"),
        ("  BYTES[buf[offset]] instead", "BYTES[buf[offset]]"),
        ("Bus.write(port, data) -> device.write", "bus_write(port, data)"),
        ("  {port: write} dict lookup + call instead", "writes[port](0, data)"),
        ("  device.write (a no-op) alone", "device.write(0, data)"),
    ]
    empty = min(timeit.repeat("pass", number=number, repeat=5))
    return [(name, max(min(timeit.repeat(statement, globals=names, number=number, repeat=5)) - empty, 0)
             / number * 1e9) for name, statement in statements]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--chunk", type=int, default=3000, help="exits per chunk (default 3000)")
    parser.add_argument("--cycles", type=int, default=40, help="rounds of all variants (default 40)")
    parser.add_argument("--thread", action="store_true", help="run every chunk on one non-main thread")
    args = parser.parse_args()

    times = profile(args.chunk, args.cycles, args.thread)
    c_wall, c_cpu = (statistics.median(row[i] for row in times["c_loop"]) for i in (0, 1))
    where = "a vCPU thread, main thread waiting" if args.thread else "the main thread"
    print(f"per exit: median of {args.cycles} chunks of {args.chunk} exits per variant, one VM, on {where}")
    print("(us; CPU = process CPU time, which other load on the host disturbs less than wall time)")
    print(f"  {'variant':<14}{'wall':>7}{'vs C':>7}{'over C':>8}{'CPU':>9}{'vs C':>7}{'over C':>8}")
    for name, rows in times.items():
        wall, cpu = (statistics.median(row[i] for row in rows) for i in (0, 1))
        print(f"  {name:<14}{wall / 1000:7.2f}{wall / c_wall:7.3f}{(wall - c_wall) / 1000:8.2f}"
              f"{cpu / 1000:9.2f}{cpu / c_cpu:7.3f}{(cpu - c_cpu) / 1000:8.2f}")
    print("\nhot-path statements alone (timeit, best of 5, caches warm)")
    for name, ns in statement_costs():
        print(f"  {name:<44}{ns:6.0f} ns")


if __name__ == "__main__":
    main()
