"""One VM after another must not grow the process: the threads a VM starts
and ends (vCPUs, device workers) allocate from one malloc arena, not from an
arena each, which kept the pages of what they freed (bench/soak: about
17 KiB a VM, without end)."""

import subprocess
import sys

SCRIPT = '''
import threading
from pyvmm.config import VmConfig
from pyvmm.machine import Machine

HEAP = 64 << 20         # glibc maps each extra arena as a 64 MiB heap


def arena_heaps():
    rows = []
    with open("/proc/self/maps") as maps:
        for line in maps:
            span, perms = line.split()[:2]
            start, end = (int(value, 16) for value in span.split("-"))
            rows.append((start, end, perms))
    return sum(1 for (start, end, perms), (next_start, next_end, next_perms) in zip(rows, rows[1:])
               if start % HEAP == 0 and perms.startswith("rw") and end == next_start
               and next_perms == "---p" and next_end - start == HEAP)


with Machine(VmConfig(serial="null", cpus=2)) as machine:
    machine.run()
barrier = threading.Barrier(4)


def allocate():
    blocks = [bytearray(1000) * 60 for _ in range(20)]      # 60 KB each: from the thread's arena
    barrier.wait()


threads = [threading.Thread(target=allocate) for _ in range(4)]
for thread in threads:
    thread.start()
for thread in threads:
    thread.join()
print(arena_heaps())
'''


def test_the_threads_of_a_process_that_ran_a_vm_share_one_malloc_arena():
    finished = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, timeout=120, check=False)
    assert finished.returncode == 0, finished.stderr.decode()[-2000:]
    assert finished.stdout.strip() == b"0"
