"""The README's device example runs as written."""

import pathlib
import re
import threading

import pytest

from pyvmm import guests
from pyvmm.config import VmConfig
from pyvmm.machine import Machine

README = pathlib.Path(__file__).resolve().parents[2] / "README.md"


def test_readme_device_example_counts_the_guest_writes(capsys):
    code = re.search(r"```python\n(.*?)```", README.read_text(), re.S).group(1)
    namespace = {}
    exec(compile(code, str(README), "exec"), namespace)
    printed = capsys.readouterr().out.split()
    assert namespace["counter"].count == 100000      # bench_exit's default loop count
    assert printed[:2] == ["1", "100000"]


def test_readme_dma_example_copies_and_interrupts_as_its_guest_checks(capsys):
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
    code = next(block for block in blocks if "class Dma" in block)
    namespace = {}
    exec(compile(code, str(README), "exec"), namespace)
    status, output = capsys.readouterr().out.split(" ", 1)
    assert output.strip().splitlines() == ["copy done", "copy exact", "irq 5 pending", "irq 5 acknowledged",
                                   "copy from outside RAM refused"]
    assert status == "1"


@pytest.mark.parametrize("exit_path", ["python", "fast"])
def test_dma_device_runs_on_its_worker_on_both_exit_paths(exit_path):
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
    code = next(block for block in blocks if "class Dma" in block)
    namespace = {}
    exec(compile(code.split("config = VmConfig")[0], str(README), "exec"), namespace)
    threads = []
    dma = namespace["Dma"]()
    copy = dma.copy
    dma.copy = lambda: (threads.append(threading.current_thread().name), copy())[1]
    config = VmConfig(kernel=guests.path("dma.bin"), raw_mode="protected", serial="buffer",
                      exit_path=exit_path)
    with Machine(config) as machine:
        machine.add_port_device(0x580, 16, dma, name="dma", irq=5)
        result = machine.run(timeout=60)
        assert (result.status, result.reason) == (1, "debug-exit"), machine.serial_output
        doorbells = machine.stats.doorbells
    assert threads == ["pyvmm-dev-dma"] * 2
    assert doorbells == (2 if exit_path == "fast" else 0)     # GO <- 1 did not exit on the fast path
