"""`pyvmm run --gdb`: Debian's gdb against the gdbtarget guest, and a raw
socket speaking (and breaking) the remote protocol.

pyvmm runs as a subprocess listening on port 0 (a free port, named in its
one stderr line "warning: waiting for gdb on 127.0.0.1:PORT")."""

import os
import re
import select
import socket
import subprocess
import sys
import threading
import time

import pytest

from pyvmm import guests
from pyvmm.gdb.packets import Decoder, checksum, frame

GDB = "gdb"
SUCCESS = (42 << 1) | 1          # the guest's debug-exit status when nothing changed it

needs_gdb = pytest.mark.gdb


@pytest.fixture(scope="module")
def target():
    return guests.path("gdbtarget.elf")


@pytest.fixture(scope="module")
def symbols(target):
    output = subprocess.run(["nm", target], capture_output=True, text=True, check=True).stdout
    return {name: int(address, 16) for address, _, name in
            (line.split() for line in output.splitlines() if len(line.split()) == 3)}


class Pyvmm:
    """`pyvmm run gdbtarget.elf --gdb 127.0.0.1:0` in the background."""

    def __init__(self, target, *extra, timeout=60):
        self.process = subprocess.Popen(
            [sys.executable, "-m", "pyvmm", "run", target, "--gdb", "127.0.0.1:0",
             "--serial", "null", "--timeout", str(timeout), *extra],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        self.first_line = self._first_line()
        match = re.fullmatch(rb"warning: waiting for gdb on 127\.0\.0\.1:(\d+)\n", self.first_line)
        assert match, self.first_line
        self.port = int(match.group(1))

    def _first_line(self, timeout=30):
        line, deadline = b"", time.monotonic() + timeout
        fd = self.process.stderr.fileno()
        while not line.endswith(b"\n") and time.monotonic() < deadline:
            if select.select([fd], [], [], 0.1)[0]:
                byte = os.read(fd, 1)
                if not byte:
                    break
                line += byte
        return line

    def wait(self, timeout=60):
        """(exit status, the rest of stderr)."""
        _, stderr = self.process.communicate(timeout=timeout)
        return self.process.returncode, stderr

    def kill(self):
        if self.process.poll() is None:
            self.process.kill()
            self.process.communicate()


@pytest.fixture
def pyvmm(target):
    started = []

    def start(*extra, timeout=60):
        started.append(Pyvmm(target, *extra, timeout=timeout))
        return started[-1]

    yield start
    for process in started:
        process.kill()


def gdb(target, port, *commands, timeout=120):
    args = [GDB, "-batch", "-nx", "-ex", f"target remote 127.0.0.1:{port}"]
    for command in commands:
        args += ["-ex", command]
    result = subprocess.run(args + [target], capture_output=True, text=True, timeout=timeout)
    return result.stdout + result.stderr


# --- Debian's gdb -----------------------------------------------------------------------------
@needs_gdb
def test_break_inspect_step_finish_and_run_to_the_end(pyvmm, target, symbols):
    vm = pyvmm()
    out = gdb(target, vm.port, "info registers rip", "break add_square", "continue",
              "info registers rip", "print counter", "print i", "next", "stepi",
              "info registers rip", "finish", "next", "print counter", "delete", "continue")
    assert "_start () at lib/start64.S" in out             # stopped before the first instruction
    assert re.search(r"rip\s+0x200000\s+0x200000 <_start>", out), out
    assert "Breakpoint 1, add_square (sum=0, i=1) at gdbtarget/gdbtarget.c:36" in out, out
    rip = re.findall(r"rip\s+(0x[0-9a-f]+)\s+0x[0-9a-f]+ <add_square\+(\d+)>", out)
    assert len(rip) == 2, out
    assert symbols["add_square"] < int(rip[0][0], 16) < int(rip[1][0], 16) < symbols["guest_main"]
    assert "$1 = 0\n$2 = 1\n" in out                            # counter, i
    assert re.search(r"\n38\s+return sum \+ square;", out)        # next
    assert "Value returned is $3 = 1" in out                    # finish
    assert re.search(r"\n47\s+counter = i;\n\$4 = 0\n", out)    # next, print counter
    assert "exited with code 0125" in out                       # 85 in octal
    status, stderr = vm.wait()
    assert status == SUCCESS and stderr == b""


@needs_gdb
def test_hardware_breakpoints_and_breakpoints_kept_inserted(pyvmm, target):
    vm = pyvmm()
    # always-inserted: the stub must step over the breakpoint it stopped on.
    out = gdb(target, vm.port, "set breakpoint always-inserted on", "break add_square", "continue",
              "continue", "print i", "delete", "hbreak add_square", "continue", "print i",
              "continue", "print i", "delete", "continue")
    assert "Breakpoint 1, add_square (sum=0, i=1)" in out
    assert "Breakpoint 1, add_square (sum=1, i=2)" in out and "$1 = 2" in out
    assert "Hardware assisted breakpoint 2 at" in out
    assert "Breakpoint 2, add_square (sum=5, i=3)" in out and "$2 = 3" in out
    assert "Breakpoint 2, add_square (sum=14, i=4)" in out and "$3 = 4" in out
    assert "exited with code 0125" in out
    assert vm.wait()[0] == SUCCESS


@needs_gdb
def test_memory_registers_and_an_unmapped_address(pyvmm, target):
    vm = pyvmm()
    out = gdb(target, vm.port, "break guest_main", "continue", "set var exit_code = 7",
              "print exit_code", "x/2i $pc", "print *(char *)0x7fff00000000", "p/x $cr0",
              "p/x $efer", "p/x $cs", "info registers eflags", "p $xmm0.uint128", "p $st0",
              "delete", "continue")
    assert "$1 = 7 '\\a'" in out
    assert "=> 0x" in out and "<guest_main+" in out
    assert "Cannot access memory at address 0x7fff00000000" in out
    assert "$2 = 0x80000011" in out             # PE, ET, PG
    assert "$3 = 0x500" in out                  # LME, LMA
    assert "$4 = 0x10" in out
    assert "$5 = 0" in out and "$6 = 0" in out
    assert "exited with code 017" in out        # (7 << 1) | 1 = 15
    assert vm.wait()[0] == 15


@needs_gdb
def test_software_watchpoints_single_step(pyvmm, target):
    vm = pyvmm()
    out = gdb(target, vm.port, "set can-use-hw-watchpoints 0", "break guest_main", "continue",
              "watch counter", "continue", "continue", "delete", "continue")
    assert "Old value = 0\nNew value = 1\n" in out and "Old value = 1\nNew value = 2\n" in out
    assert "exited with code 0125" in out
    assert vm.wait()[0] == SUCCESS


@needs_gdb
def test_interrupt_stops_a_spinning_guest(pyvmm, target, tmp_path):
    script = tmp_path / "interrupt.py"
    script.write_text("import threading, gdb\n"
                      "threading.Timer(1.0, lambda: gdb.post_event(\n"
                      "    lambda: gdb.execute('interrupt'))).start()\n")
    vm = pyvmm()
    out = gdb(target, vm.port, "break guest_main", "continue", "delete", "set var spin = 1",
              f"source {script}", "continue", "print spin", "print counter > 10",
              "set var spin = 0", "continue")
    assert "Program received signal SIGINT, Interrupt." in out, out
    assert "$1 = 1\n$2 = 1\n" in out
    assert "exited with code 0125" in out
    assert vm.wait()[0] == SUCCESS


@needs_gdb
def test_kill_ends_the_run_with_status_0(pyvmm, target):
    vm = pyvmm()
    out = gdb(target, vm.port, "break add_square", "continue", "kill")
    assert "[Inferior 1 (Remote target) killed]" in out
    assert vm.wait() == (0, b"")


@needs_gdb
def test_detach_lets_the_guest_run_on(pyvmm, target):
    vm = pyvmm()
    out = gdb(target, vm.port, "break add_square", "continue", "set var exit_code = 9", "detach")
    assert "[Inferior 1 (Remote target) detached]" in out
    assert vm.wait() == ((9 << 1) | 1, b"")                   # breakpoint gone, guest ran on


@needs_gdb
def test_two_vcpus_are_two_threads(pyvmm, target):
    vm = pyvmm("--cpus", "2")
    out = gdb(target, vm.port, "info threads", "break add_square", "continue", "thread 2",
              "info registers rip", "delete", "continue")
    assert "Thread 2 (vCPU 1)" in out and "Thread 1 (vCPU 0)" in out
    assert "Thread 1 hit Breakpoint 1, add_square" in out
    assert re.search(r"rip\s+0xfff0\s", out), out              # the AP waits for its SIPI
    assert vm.wait()[0] == SUCCESS


# --- a raw socket ----------------------------------------------------------------------------------
class RawGdb:
    def __init__(self, port):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=30)
        self.decoder = Decoder(max_packet=1 << 20)
        self.events = []

    def send(self, data):
        self.sock.sendall(data)

    def next_event(self):
        while not self.events:
            data = self.sock.recv(65536)
            assert data, "the stub closed the connection"
            self.events += self.decoder.feed(data)
        return self.events.pop(0)

    def request(self, payload):
        """Sends a packet; returns the reply payload after checking the ack."""
        self.send(frame(payload))
        assert self.next_event() == ("ack", None)
        return self.reply()

    def reply(self):
        kind, value = self.next_event()
        assert kind == "packet", (kind, value)
        self.send(b"+")
        return value

    def close(self):
        self.sock.close()


def test_malformed_packets_get_errors_or_naks_and_a_dropped_connection_detaches(pyvmm):
    vm = pyvmm()
    raw = RawGdb(vm.port)
    raw.send(b"$?#00")                                          # bad checksum
    assert raw.next_event() == ("nak", None)
    raw.send(b"garbage before a packet ")
    assert raw.request(b"?") == b"T05thread:1;"
    assert raw.request(b"qSupported:swbreak+;hwbreak+").startswith(b"PacketSize=4000;")
    assert len(raw.request(b"g")) == 2 * 608
    assert raw.request(b"m7fff00000000,4") == b"E14"            # not mapped
    assert raw.request(b"m100000000,4") == b"E14"               # mapped, but not guest RAM
    assert raw.request(b"mzz,4") == b"E01"
    assert raw.request(b"m200000") == b"E01"
    assert raw.request(b"M200000,2:zz") == b"E01"
    assert raw.request(b"M200000,4:00") == b"E01"
    assert raw.request(b"Z0,7fff00000000,1") == b"E14"
    assert raw.request(b"qXfer:features:read:target.xml:0,11111111111111111") == b"E01"
    assert raw.request(b"vCont;q") == b"E01"
    assert raw.request(b"Hg7") == b"E02"
    assert raw.request(b"P9999=00") == b"E01"
    assert raw.request(b"no such packet") == b""
    body = b"M200000,1:" + b"00" * 0x4000                       # longer than PacketSize
    raw.send(b"$" + body + b"#%02x" % checksum(body))
    assert raw.next_event() == ("ack", None) and raw.reply() == b"E01"
    assert raw.request(b"m200000,1") == b"fa"                   # cli: still alive, untouched
    raw.close()                                                 # dropped while stopped: detach
    assert vm.wait() == (SUCCESS, b"")


def test_interrupt_byte_while_the_guest_spins(pyvmm, symbols):
    vm = pyvmm()
    raw = RawGdb(vm.port)
    assert raw.request(b"QStartNoAckMode") == b"OK"          # from here on: no acks
    raw.send(frame(b"qSupported:hwbreak+"))
    assert raw.next_event()[0] == "packet"
    main = symbols["guest_main"]
    raw.send(frame(b"Z1,%x,1" % main))
    assert raw.next_event() == ("packet", b"OK")
    raw.send(frame(b"vCont;c"))
    assert raw.next_event() == ("packet", b"T05thread:1;hwbreak:;")
    for packet in (b"z1,%x,1" % main, b"M%x,4:01000000" % symbols["spin"]):
        raw.send(frame(packet))
        assert raw.next_event() == ("packet", b"OK")
    raw.send(frame(b"c"))
    time.sleep(0.5)
    raw.send(b"\x03")
    assert raw.next_event() == ("packet", b"T02thread:1;")
    raw.send(frame(b"p10"))                                     # rip
    kind, value = raw.next_event()
    rip = int.from_bytes(bytes.fromhex(value.decode()), "little")
    assert main < rip < main + 0x100
    raw.send(frame(b"m%x,8" % symbols["counter"]))
    assert int.from_bytes(bytes.fromhex(raw.next_event()[1].decode()), "little") > 10
    raw.send(frame(b"M%x,4:00000000" % symbols["spin"]))
    assert raw.next_event() == ("packet", b"OK")
    raw.send(frame(b"vCont;c"))
    assert raw.next_event() == ("packet", b"W55")               # the run ended: status 85
    assert vm.wait() == (SUCCESS, b"")


def test_connection_dropped_while_running_lets_the_run_go_on(pyvmm, symbols):
    vm = pyvmm()
    raw = RawGdb(vm.port)
    assert raw.request(b"Z0,%x,1" % symbols["add_square"]) == b"OK"
    raw.send(frame(b"c"))
    assert raw.next_event() == ("ack", None)
    assert raw.reply() == b"T05thread:1;"                       # no swbreak: not negotiated
    raw.send(frame(b"c"))
    raw.close()                                                  # the breakpoint goes with it
    assert vm.wait() == (SUCCESS, b"")


def test_the_run_can_end_before_gdb_connects(pyvmm):
    vm = pyvmm(timeout=1)
    status, stderr = vm.wait()
    assert status == 124 and stderr.startswith(b"pyvmm: timed out")


def test_bad_gdb_addresses_are_usage_errors(target):
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen(1)
    try:
        for address, message in (("nonsense", b"invalid gdb address"),
                                 ("127.0.0.1:99999", b"invalid gdb address"),
                                 (f"127.0.0.1:{busy.getsockname()[1]}", b"cannot listen for gdb")):
            result = subprocess.run([sys.executable, "-m", "pyvmm", "run", target, "--gdb", address],
                                    capture_output=True, timeout=60)
            assert result.returncode == 2, result
            assert result.stderr.startswith(b"pyvmm: error: ") and message in result.stderr
            assert len(result.stderr.splitlines()) == 1
    finally:
        busy.close()


def test_a_machine_from_python_serves_gdb_and_releases_its_port(target):
    from pyvmm.config import VmConfig
    from pyvmm.machine import Machine

    results = []
    with Machine(VmConfig(kernel=target, serial="buffer", timeout=60, gdb="127.0.0.1:0")) as machine:
        port = machine.gdb.port
        runner = threading.Thread(target=lambda: results.append(machine.run()))
        runner.start()
        raw = RawGdb(port)
        assert raw.request(b"qfThreadInfo") == b"m1"
        assert raw.request(b"D") == b"OK"
        runner.join(60)
        raw.close()
    assert results[0].status == SUCCESS and results[0].reason == "debug-exit"
    with socket.socket() as again:                      # the listening socket is gone
        again.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        again.bind(("127.0.0.1", port))
        again.listen(1)


def test_the_command_line_warns_before_it_waits_for_gdb():
    result = subprocess.run([sys.executable, "-m", "pyvmm", "run", guests.path("gdbtarget.elf"),
                             "--gdb", "0.0.0.0:0", "--serial", "null", "--timeout", "0.5"],
                            capture_output=True, timeout=60)
    lines = result.stderr.decode().splitlines()
    assert result.returncode == 124, lines
    assert lines[0].startswith("warning: the gdb stub listens on 0.0.0.0:")
    assert lines[1].startswith("warning: waiting for gdb on 0.0.0.0:")
