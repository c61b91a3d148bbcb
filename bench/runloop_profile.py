#!/usr/bin/env python3
"""Where pyvmm's run loop spends its time per port-I/O exit.

Not part of the pass/fail benchmark: a diagnostic for when bench/exit_latency's ratio is over
target. It runs stripped-down copies of pyvmm.runloop.VcpuLoop.run (pyvmm itself is not
modified) on the same bench_exit.bin, interleaved with the C loop, each variant adding one piece
of the real loop back; then it times each hot-path statement alone with timeit (no KVM).

usage: python bench/runloop_profile.py [--exits N] [--rounds R]
"""

import argparse
import importlib.machinery
import importlib.util
import os
import statistics
import struct
import tempfile
import threading
import time
import timeit

from pyvmm._kvm import ffi, lib
from pyvmm.config import VmConfig
from pyvmm.devices import Bus
from pyvmm.loader import LoadOptions
from pyvmm.runloop import VcpuLoop
from pyvmm.stats import ExitStats
from pyvmm.vmm import Machine

HERE = os.path.dirname(os.path.abspath(__file__))
_loader = importlib.machinery.SourceFileLoader("exit_latency", os.path.join(HERE, "exit_latency"))
bench = importlib.util.module_from_spec(importlib.util.spec_from_loader(_loader.name, _loader))
_loader.exec_module(bench)

KVM_RUN, EXIT_IO, IO_OUT, DEBUG_EXIT = lib.KVM_RUN, lib.KVM_EXIT_IO, lib.KVM_EXIT_IO_OUT, 0xF4
# Our own copy of the kvm_run decoding (pyvmm.runloop's private names change under us).
_UNION = ffi.offsetof("struct kvm_run", "io")
_REASON_OFFSET = ffi.offsetof("struct kvm_run", "exit_reason")
_REASON = struct.Struct("<I")
_IO = struct.Struct("<BBHIQ")           # direction, size, port, count, data_offset
_EXIT_IO = struct.Struct(f"<I{_UNION - _REASON_OFFSET - 4}xBBHIQ")   # exit_reason + the above


# --- loop variants: each runs the vCPU until the guest writes the debug-exit port --------------

def ioctl_only(vcpu, bus, stats, stop):
    """KVM_RUN through cffi and a one-byte look at the port: the floor for any Python loop."""
    fd, ioctl, buf, port_byte = vcpu.fd, lib.pyvmm_ioctl_value, vcpu.run_buffer, _UNION + 2
    while True:
        ioctl(fd, KVM_RUN, 0)
        if buf[port_byte] == DEBUG_EXIT:
            return


def decode_stats(vcpu, bus, stats, stop):
    """+ the error check, struct-unpacking the exit header, the counters, the validity checks."""
    fd, ioctl, buf, run_size = vcpu.fd, lib.pyvmm_ioctl_value, vcpu.run_buffer, vcpu.run_size
    unpack, reasons, ports = _EXIT_IO.unpack_from, stats.reasons, stats.ports
    while True:
        if ioctl(fd, KVM_RUN, 0) < 0:
            raise OSError("KVM_RUN")
        reason, direction, size, port, count, offset = unpack(buf, _REASON_OFFSET)
        if reason < 64:
            reasons[reason] += 1
        if reason == EXIT_IO:
            key = port << 1 | direction
            ports[key] = ports.get(key, 0) + count
            if count == 1 and size in (1, 2, 4) and offset + size <= run_size and port == DEBUG_EXIT:
                return


def lean(vcpu, bus, stats, stop):
    """The least Python that still hands the device its bytes: one unpack, port -> device.write
    from a dict (both devices here sit at offset 0 of their range), no counters, no Bus."""
    fd, ioctl, buf, unpack = vcpu.fd, lib.pyvmm_ioctl_value, vcpu.run_buffer, _EXIT_IO.unpack_from
    writes = {port: bus.device_at(port).write for port in (bench.BENCH_PORT, DEBUG_EXIT)}
    while not stop.requested:
        if ioctl(fd, KVM_RUN, 0) < 0:
            raise OSError("KVM_RUN")
        reason, direction, size, port, count, offset = unpack(buf, _REASON_OFFSET)
        if reason == EXIT_IO and count == 1 and direction == IO_OUT:
            writes[port](0, bytes(buf[offset:offset + size]))


def lean_bus(vcpu, bus, stats, stop):
    """lean, but through Bus.write (bisect-free _last_hit cache, then device.write)."""
    fd, ioctl, buf, unpack = vcpu.fd, lib.pyvmm_ioctl_value, vcpu.run_buffer, _EXIT_IO.unpack_from
    write = bus.write
    while not stop.requested:
        if ioctl(fd, KVM_RUN, 0) < 0:
            raise OSError("KVM_RUN")
        reason, direction, size, port, count, offset = unpack(buf, _REASON_OFFSET)
        if reason == EXIT_IO and count == 1 and direction == IO_OUT:
            write(port, bytes(buf[offset:offset + size]))


def full_copy(vcpu, bus, stats, stop):
    """+ bytes(buf[...]) and bus.write -> device.write: the whole of VcpuLoop.run's IO path."""
    VcpuLoop(vcpu, bus, None, stop, stats).run()


def pyvmm_threaded(vcpu, bus, stats, stop):
    """VcpuLoop.run in a thread while the main thread waits as Machine._supervise does."""
    thread = threading.Thread(target=VcpuLoop(vcpu, bus, None, stop, stats).run)
    thread.start()
    while not stop.event.is_set():
        stop.event.wait(0.05)
    thread.join()


VARIANTS = [ioctl_only, decode_stats, lean, lean_bus, full_copy, pyvmm_threaded]


def run_variant(variant, path, image, exits):
    config = VmConfig(kernel=path, raw_mode="protected", serial="buffer")
    with Machine(config, image=image, options=LoadOptions(raw_mode="protected")) as machine:
        machine.add_port_device(bench.BENCH_PORT, 1, bench.NullDevice(), name="bench")
        (user, system), start = bench.cpu_ns(), time.monotonic_ns()
        variant(machine.vcpus[0], machine.port_bus, ExitStats(), machine.stop)
        elapsed, (user_end, system_end) = time.monotonic_ns() - start, bench.cpu_ns()
        return elapsed / (exits + 1), (user_end - user) / (exits + 1), (system_end - system) / (exits + 1)


# --- the hot-path statements alone, no KVM ------------------------------------------------------

def statement_costs(number=200000):
    """ns per execution of each statement of the IO path, on a fake kvm_run holding an OUT exit."""
    buf = memoryview(bytearray(4096))
    struct.pack_into("<I", buf, _REASON_OFFSET, EXIT_IO)
    _IO.pack_into(buf, _UNION, IO_OUT, 1, bench.BENCH_PORT, 1, 4096 - 8)
    bus = Bus.port_io()
    device = bench.NullDevice()
    bus.register(bench.BENCH_PORT, 1, device)
    stats = ExitStats()
    names = dict(buf=buf, fd=-1, kvm_run=KVM_RUN, ioctl=lib.pyvmm_ioctl_value, os=os,
                 unpack_reason=_REASON.unpack_from, unpack_io=_IO.unpack_from, unpack_exit=_EXIT_IO.unpack_from, reasons=stats.reasons,
                 ports=stats.ports, reason=EXIT_IO, port=bench.BENCH_PORT, direction=IO_OUT, count=1,
                 size=1, offset=4096 - 8, run_size=4096, union=_UNION, ro=_REASON_OFFSET, EXIT_IO=EXIT_IO,
                 IO_OUT=IO_OUT, port_write=bus.write, device=device, data=b"\0", sizes=(1, 2, 4),
                 stop=VcpuLoop.__new__(VcpuLoop), EINTR=4, EAGAIN=11)
    names["stop"].requested = False
    statements = [
        ("while not stop.requested (loop test)", "stop.requested"),
        ("cffi call + failing syscall (fd -1)", "ioctl(fd, kvm_run, 0)"),
        ("  plain failing syscall (os.close(-1))", "try: os.close(-1)\nexcept OSError: pass"),
        ("ret < 0 test", "0 < 0"),
        ("unpack reason", "unpack_reason(buf, ro)[0]"),
        ("reasons[reason] += 1 (with < 64 test)", "if reason < 64: reasons[reason] += 1"),
        ("reason == EXIT_IO test", "reason == EXIT_IO"),
        ("unpack io header", "direction, size, port, count, offset = unpack_io(buf, union)"),
        ("  reason + io header in one unpack", "r, direction, size, port, count, offset = unpack_exit(buf, ro)"),
        ("ports[key] counter", "key = port << 1 | direction; ports[key] = ports.get(key, 0) + count"),
        ("validity checks", "count == 1 and size in sizes and offset + size <= run_size"),
        ("direction == IO_OUT test", "direction == IO_OUT"),
        ("bytes(buf[offset:offset + size])", "bytes(buf[offset:offset + size])"),
        ("bus.write -> device.write", "port_write(port, data)"),
        ("  of which device.write alone", "device.write(0, data)"),
    ]
    costs = []
    for name, statement in statements:
        best = min(timeit.repeat(statement, globals=names, number=number, repeat=5))
        costs.append((name, best / number * 1e9))
    empty = min(timeit.repeat("pass", number=number, repeat=5)) / number * 1e9
    return [(name, max(ns - empty, 0.0)) for name, ns in costs]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--exits", type=int, default=100000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()

    binary = bench.build_c()
    path, image = bench.patched_image(args.exits)
    results = {"C loop": []}
    results.update({variant.__name__: [] for variant in VARIANTS})
    with tempfile.NamedTemporaryFile(suffix=".bin") as image_file:
        image_file.write(image)
        image_file.flush()
        for _ in range(args.rounds):
            results["C loop"].append(bench.run_c(binary, image_file.name, args.exits))
            for variant in VARIANTS:
                results[variant.__name__].append(run_variant(variant, path, image, args.exits))
    c = statistics.median(row[0] for row in results["C loop"])
    print(f"per exit, N={args.exits}, median of {args.rounds} interleaved rounds (us)")
    print(f"  {'variant':<16}{'wall':>7}{'vs C':>7}{'over C':>8}{'user':>7}{'system':>8}{'off-CPU':>9}   wall per round")
    for name, rows in results.items():
        wall, user, system = (statistics.median(row[i] for row in rows) / 1000 for i in range(3))
        off_cpu = statistics.median(row[0] - row[1] - row[2] for row in rows) / 1000
        rounds = " ".join(f"{row[0] / 1000:.1f}" for row in rows)
        print(f"  {name:<16}{wall:7.2f}{wall * 1000 / c:7.3f}{wall - c / 1000:8.2f}{user:7.2f}{system:8.2f}"
              f"{off_cpu:9.2f}   {rounds}")
    print("\nhot-path statements alone (timeit, best of 5, loop overhead removed)")
    for name, ns in statement_costs():
        print(f"  {name:<40}{ns:7.0f} ns")


if __name__ == "__main__":
    main()
