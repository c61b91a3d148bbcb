"""A process that loads kernel images on request and measures what each load cost.

Used by test_loader_resources.py. Protocol on stdin/stdout: each request is a
4-byte little-endian length and a pickle of (image, ram_size, LoadOptions
fields); each reply the same framing around (outcome, seconds, peak bytes).

The peak is the rise of this process's peak RSS (VmHWM) over its RSS just
before the load, with VmHWM reset first (writing 5 to /proc/self/clear_refs,
Linux 4.0+). RSS sees everything a load costs: Python objects, C
allocations and the guest pages it touches; tracemalloc would miss the last
two. The guest RAM is created before the measurement and released after it.
"""

import gc
import pickle
import struct
import sys
import time

from pyvmm.arch.x86_64 import layout
from pyvmm.loader import LoaderError, LoadOptions, load_kernel
from pyvmm.memory import GuestMemory
from pyvmm.machine.builder import write_firmware_tables

FRAME = struct.Struct("<I")


def status_kib(field):
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def reset_peak():
    with open("/proc/self/clear_refs", "w") as clear_refs:
        clear_refs.write("5")


def measure(image, ram_size, fields):
    with GuestMemory(layout.ram_ranges(ram_size)) as memory:
        write_firmware_tables(memory, 1)
        options = LoadOptions(**fields)
        gc.collect()
        reset_peak()
        before = status_kib("VmRSS")
        started = time.perf_counter()
        try:
            spec = load_kernel(image, memory, options)
            outcome = f"loaded as {spec.format}"
        except LoaderError as error:
            outcome = f"LoaderError: {error}"
        elapsed = time.perf_counter() - started
        peak = status_kib("VmHWM")
    return outcome, elapsed, max(0, peak - before) * 1024


def read_exactly(stream, count):
    data = stream.read(count)
    if len(data) < count:
        raise EOFError
    return data


def main():
    requests, replies = sys.stdin.buffer, sys.stdout.buffer
    while True:
        try:
            (length,) = FRAME.unpack(read_exactly(requests, FRAME.size))
        except EOFError:
            return
        image, ram_size, fields = pickle.loads(read_exactly(requests, length))
        reply = pickle.dumps(measure(image, ram_size, fields))
        del image
        replies.write(FRAME.pack(len(reply)) + reply)
        replies.flush()


if __name__ == "__main__":
    main()
