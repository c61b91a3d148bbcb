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


def shell_blocks():
    return re.findall(r"```sh\n(.*?)```", README.read_text(), re.S)


def shell(command, cwd, timeout=120):
    """A README command as a user's shell runs it: the installed `pyvmm` on PATH."""
    import os
    import subprocess
    import sys
    env = dict(os.environ, PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"])
    return subprocess.run(["bash", "-c", command], cwd=cwd, env=env, capture_output=True,
                          timeout=timeout)


def test_readme_replay_example_compares_both_paths():
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
    code = next(block for block in blocks if "replay_on_kvm(" in block)
    assert "devices=" in code
    namespace = {}
    exec(compile(code, str(README), "exec"), namespace)
    namespace["test_latch_without_and_with_kvm"]()


def test_readme_device_from_the_current_directory_runs_as_written(tmp_path):
    block = next(block for block in shell_blocks() if "cat > mydev.py" in block)
    heredoc, _, commands = block.partition("END\n")
    assert shell(heredoc + "END\n", tmp_path).returncode == 0
    runs = [line for line in commands.splitlines() if line.startswith("pyvmm ")]
    assert runs
    for line in runs:
        command, _, comment = line.partition("#")
        expected = int(comment.split("status")[1]) if "status" in comment else 0
        result = shell(command, tmp_path)
        assert (result.returncode, result.stderr) == (expected, b""), line


def test_readme_serial_examples_boot_bundled_guests_by_name(tmp_path):
    result = shell("echo 42 | pyvmm run --guest status", tmp_path)
    assert "`echo 42\n  | pyvmm run --guest status` exits with status 85" in README.read_text()
    assert result.returncode == 85


@pytest.mark.gdb
def test_readme_gdb_example_runs_as_written(tmp_path):
    import socket
    import subprocess
    block = next(block for block in shell_blocks() if "--gdb" in block)
    run_line, gdb_line = [line.split("#")[0].strip() for line in block.strip().splitlines()]
    with socket.socket() as probe:          # a free port instead of 1234
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    run_line, gdb_line = (line.replace(":1234", f":{port}") for line in (run_line, gdb_line))
    import os
    import sys
    env = dict(os.environ, PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"])
    vmm = subprocess.Popen(["bash", "-c", run_line], cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE)
    try:
        assert vmm.stderr.readline().decode() == f"warning: waiting for gdb on 127.0.0.1:{port}\n"
        debugger = shell(f"{gdb_line} -batch -nx -ex 'break add_square' -ex continue -ex continue "
                         "-ex 'delete' -ex continue", tmp_path)
        out = debugger.stdout.decode()
        assert "Breakpoint 1, add_square" in out, out + debugger.stderr.decode()
        assert "exited with code 0125" in out, out        # 85, in octal
        assert vmm.wait(timeout=60) == 85
    finally:
        vmm.kill()
        vmm.wait()


def test_readme_snapshot_fuzzing_example_passes_and_finds_the_planted_bug():
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
    code = next(block for block in blocks if "SnapshotFuzzer" in block)
    namespace = {}
    exec(compile(code, str(README), "exec"), namespace)
    namespace["test_the_parser_always_answers"]()
    assert namespace["fuzzer"].examples >= 1000
    namespace["fuzzer"].close()
    widened = code.replace("st.integers(0, 15)", "st.integers(0, 20)")
    assert widened != code
    namespace = {}
    exec(compile(widened, str(README), "exec"), namespace)
    with pytest.raises(AssertionError) as failure:
        namespace["test_the_parser_always_answers"]()
    assert "data=b'\\x10\\x00'" in "\n".join(getattr(failure.value, "__notes__", [])) + str(failure.value)
    namespace["fuzzer"].close()
