"""`pyvmm run` end to end, as a user runs it."""

import re
import subprocess
import sys

import pytest

from pyvmm import guests


def pyvmm(*args, stdin=b"", timeout=60):
    return subprocess.run([sys.executable, "-m", "pyvmm", *args], input=stdin,
                          capture_output=True, timeout=timeout)


def test_default_boots_the_bundled_hello_guest():
    result = pyvmm("run")
    assert result.returncode == 0
    assert result.stdout == b"Hello from a pyvmm guest!\n"
    assert result.stderr == b""


def test_status_comes_from_debug_exit_and_input_from_stdin():
    result = pyvmm("run", guests.path("status.bin"), "--raw-mode", "protected", stdin=b"21\n")
    assert result.returncode == (21 << 1) | 1
    assert result.stderr == b""


def test_elf_kernel_is_detected():
    result = pyvmm("run", guests.path("compute.elf"))
    assert result.stdout.startswith(b"fnv1a=0x")
    assert result.returncode % 2 == 1


def test_timeout_ends_a_spinning_guest_with_124(tmp_path):
    spin = tmp_path / "spin.bin"
    spin.write_bytes(b"\xeb\xfe")  # jmp .
    result = pyvmm("run", str(spin), "--raw-mode", "real", "--timeout", "0.5")
    assert result.returncode == 124
    assert result.stderr.decode().startswith("pyvmm: timed out")


def test_triple_fault_is_a_crash_with_one_line_reason(tmp_path):
    # lidt [limit 0]; ud2 -> #UD cannot be delivered -> triple fault
    code = bytes.fromhex("0f011d0c001000") + b"\x0f\x0b" + b"\x00" * 3 + b"\x00\x00\x00\x00\x00\x00"
    kernel = tmp_path / "crash.bin"
    kernel.write_bytes(code)
    result = pyvmm("run", str(kernel), "--raw-mode", "protected")
    assert result.returncode == 125
    lines = result.stderr.decode().strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("pyvmm: guest crashed:"), lines
    assert "triple fault" in lines[0]


def test_stats_are_printed_to_stderr():
    result = pyvmm("run", "--stats")
    assert result.returncode == 0
    stderr = result.stderr.decode()
    assert stderr.startswith("run ended: halt, status 0\n")
    assert "exits:" in stderr
    assert "0x03f8 out" in stderr and "0x03fd in" in stderr
    assert all("serial (COM1)" in line for line in stderr.splitlines() if "0x03f" in line)


def test_serial_to_file_and_null(tmp_path):
    log = tmp_path / "console.log"
    result = pyvmm("run", "--serial", f"file:{log}")
    assert (result.returncode, result.stdout) == (0, b"")
    assert log.read_bytes() == b"Hello from a pyvmm guest!\n"
    result = pyvmm("run", "--serial", "null")
    assert (result.returncode, result.stdout) == (0, b"")


def test_closed_stdout_does_not_crash_pyvmm():
    process = subprocess.Popen([sys.executable, "-m", "pyvmm", "run"], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
    process.stdout.close()
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 0
    assert b"Traceback" not in stderr


def test_post_codes_are_timestamped_in_stats(tmp_path):
    # mov al,0x42; out 0x80,al; mov al,0x43; out 0x80,al; cli; hlt
    kernel = tmp_path / "post.bin"
    kernel.write_bytes(bytes.fromhex("b042e680b043e680faf4"))
    result = pyvmm("run", str(kernel), "--raw-mode", "real", "--stats")
    assert result.returncode == 0
    lines = result.stderr.decode().splitlines()
    start = lines.index("POST codes (port 0x80): 2 writes")
    entries = [re.fullmatch(r"\s*\+\s*([\d.]+) ms\s+(0x[0-9a-f]+)", line).groups()
               for line in lines[start + 1:start + 3]]
    stamps = [float(stamp) for stamp, _ in entries]
    assert [value for _, value in entries] == ["0x42", "0x43"]
    assert 0 <= stamps[0] <= stamps[1]


def test_sigterm_unwinds_cleanly(tmp_path):
    import signal
    import time
    spin = tmp_path / "spin.bin"
    spin.write_bytes(b"\xeb\xfe")  # jmp .
    process = subprocess.Popen([sys.executable, "-m", "pyvmm", "run", str(spin), "--raw-mode", "real"],
                               stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    time.sleep(1.5)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=30)
    assert process.returncode == 128 + signal.SIGTERM
    assert stderr == b""


def test_terminal_input_is_raw_during_the_run_and_restored_after():
    import os
    import pty
    import termios
    import time
    controller, terminal = pty.openpty()
    before = termios.tcgetattr(terminal)
    try:
        process = subprocess.Popen([sys.executable, "-m", "pyvmm", "run", guests.path("echo.bin"),
                                    "--timeout", "60"],
                                   stdin=terminal, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        # Input only once pyvmm made the terminal raw: a cooked one would hold
        # "ab" back and take \x04 as end-of-file (a loaded host starts pyvmm
        # later than any fixed wait).
        deadline = time.monotonic() + 30
        while termios.tcgetattr(terminal)[3] & termios.ICANON and process.poll() is None:
            assert time.monotonic() < deadline, "pyvmm never made the terminal raw"
            time.sleep(0.02)
        os.write(controller, b"ab\x04")
        output, stderr = process.communicate(timeout=60)
        assert (process.returncode, output) == (0, b"ab\nbye\n"), stderr
        assert termios.tcgetattr(terminal) == before
    finally:
        os.close(controller)
        os.close(terminal)


@pytest.mark.parametrize("exit_path", ["python", "fast"])
def test_both_exit_paths_boot_hello(exit_path):
    result = pyvmm("run", "--exit-path", exit_path, "--stats=json")
    assert (result.returncode, result.stdout) == (0, b"Hello from a pyvmm guest!\n")
    assert '"reason": "halt"' in result.stderr.decode()


def test_boot_restores_the_signal_handlers_it_installs():
    import signal

    from pyvmm import cli

    def mine(signo, frame):
        pass

    previous = signal.signal(signal.SIGTERM, mine)
    hup = signal.getsignal(signal.SIGHUP)       # whatever pytest was started with (SIG_IGN under nohup)
    try:
        assert cli.main(["run", "--serial", "null"]) == 0
        assert signal.getsignal(signal.SIGTERM) is mine
        assert signal.getsignal(signal.SIGHUP) is hup
        cli.main(["run", "--serial", "null"])
        assert signal.getsignal(signal.SIGHUP) is hup
    finally:
        signal.signal(signal.SIGTERM, previous)


@pytest.mark.parametrize("name, status, output", [
    ("hello", 0, b"Hello from a pyvmm guest!\n"),
    ("real", 0x21, b"real\n"),                      # a flat real-mode binary: --raw-mode real
    ("long", 0x61, b"long\n"),                      # a flat 64-bit binary: --raw-mode long
    ("compute", 0x4B, b"fnv1a=0xe3db629899874325 sum=2499500025000000\n"),
    ("gdbtarget.elf", 85, b""),
])
def test_bundled_guests_boot_by_name_in_their_mode(name, status, output):
    result = pyvmm("run", "--guest", name, "--timeout", "30")
    assert (result.returncode, result.stdout, result.stderr) == (status, output, b"")


def test_a_guest_by_name_takes_input_from_stdin():
    result = pyvmm("run", "--guest", "status", stdin=b"42\n")
    assert (result.returncode, result.stderr) == ((42 << 1) | 1, b"")
