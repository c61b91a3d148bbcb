"""The gdb stub: a TCP server for one gdb connection, and vCPU control.

Threads. The stub's own thread accepts one connection and serves it; the
vCPU threads keep running their VcpuLoop. A vCPU stops ("parks") in one of
two hooks the run loop calls on its own thread, never inside KVM_RUN:
a kick handler after a kick (KVM_RUN returned EINTR, so every exit has
been completed and the registers are consistent) and `debug_handler` after
a debug exit. The stub thread only touches a vCPU (registers, guest debug,
translation) while it is parked; guest memory likewise.

All-stop. When one vCPU stops (breakpoint, single-step) or gdb sends Ctrl-C,
the stub kicks the others (immediate_exit + a signal, as the supervisor's
probes do) until every vCPU is parked, then sends the stop reply. A resume
makes the chosen vCPUs runnable again.

Breakpoints. Software breakpoints are an int3 (0xCC) written into guest
memory at the physical address the guest's page tables give for the virtual
address; the original byte is restored on removal, hidden from memory reads
and kept up to date by memory writes. KVM reports a hit either as
KVM_EXIT_DEBUG with #BP (KVM_GUESTDBG_USE_SW_BP on VMX/SVM hosts) or, on
hosts that run guest kernel code in KVM's instruction emulator (kvm_pvm),
as an emulation failure on the int3 (the emulator cannot execute int3
outside real mode); the stub treats an emulation failure at one of its own
int3 as the breakpoint hit, leaving RIP at the breakpoint. Hardware
breakpoints use DR0-DR3 through KVM_SET_GUEST_DEBUG. A vCPU resumed while
sitting on an inserted breakpoint first single-steps over it with that
breakpoint lifted.

End of the session: `k` ends the run (status 0); `D` or a dropped
connection removes every breakpoint, turns guest debugging off and lets the
guest run on without the stub; when the run ends while gdb waits for the
guest, gdb gets `W` with pyvmm's exit status (modulo 256).
"""

import ipaddress
import os
import select
import socket
import sys
import threading
import time

from ..kvm.exits import DebugExit, InternalErrorExit
from ..config import ConfigError, parse_endpoint
from ..kvm import KvmError
from ..memory import GuestMemoryError
from ..run.stop import STATUS_OK
from . import registers
from .commands import (E_FAULT, E_MALFORMED, E_REFUSED, SIGINT, SIGTRAP, Commands,
                       StopEvent, TargetError)
from .packets import ACK, NAK, Decoder, error_reply, frame

MSR_KERNEL_GS_BASE = 0xC0000102
INT3 = 0xCC
PAGE_SIZE = 4096
BP_VECTOR, DB_VECTOR = 3, 1
DR6_BS = 1 << 14              # single-step
DR6_HIT = 0xF                 # B0-B3: DR0-DR3 matched
DR7_FIXED = 0x600             # GE, and bit 10 which reads as 1
HW_SLOTS = 4
STEP_TIMEOUT = 2.0            # a step over a breakpoint that never ends (a halt)
PARK_POLL = 0.05
SEND_TIMEOUT = 30.0
RECV_SIZE = 65536


def _is_loopback(host):
    try:
        return ipaddress.ip_address(host.split("%", 1)[0]).is_loopback
    except ValueError:
        return False


class GdbError(ConfigError):
    """The stub cannot listen where it was asked to."""


class _SwBreakpoint:
    __slots__ = ("phys", "original")

    def __init__(self, phys, original):
        self.phys = phys
        self.original = original


class _Dropped(Exception):
    """The connection to gdb is gone."""


class GdbStub:
    """Listens on `endpoint` from construction on; start() hooks the vCPU
    loops and serves one gdb connection; finish() reports the end of the run;
    close() releases the socket and the thread."""

    def __init__(self, machine, endpoint):
        self.machine = machine
        host, port = parse_endpoint(endpoint)
        try:
            family, kind, proto, _, address = socket.getaddrinfo(
                host, port, type=socket.SOCK_STREAM)[0]
            listener = socket.socket(family, kind, proto)
        except (OSError, UnicodeError) as error:
            raise GdbError(f"cannot listen for gdb on {endpoint}: "
                           f"{getattr(error, 'strerror', None) or error}") from None
        try:
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            listener.bind(address)
            listener.listen(1)
        except OSError as error:
            listener.close()
            raise GdbError(f"cannot listen for gdb on {endpoint}: {error.strerror or error}") from None
        self._listener = listener
        bound = listener.getsockname()
        self.host, self.port = bound[0], bound[1]
        if not _is_loopback(self.host):
            print(f"warning: the gdb stub listens on {self.endpoint}, which other hosts can "
                  f"reach; gdb's protocol has no authentication: whoever connects controls "
                  f"the guest", file=sys.stderr, flush=True)
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._cond = threading.Condition()
        self._runnable = set()       # vCPU indices allowed to run
        self._parked = set()         # vCPU indices waiting in _park
        self._events = []            # StopEvents from vCPU threads
        self._active = True          # False once the session ended (detach, drop)
        self._finished = None        # the RunResult once the run is over
        self._closing = False
        self._sw = {}                # virtual address -> _SwBreakpoint
        self._hw = [None] * HW_SLOTS
        self._loops = []
        self._kick = None
        self._thread = None

    @property
    def endpoint(self):
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    # --- lifetime (called by Machine) ----------------------------------------------------
    def start(self, loops, kick):
        """Hooks the vCPU loops (before their threads start) so that every
        vCPU stops before its first instruction, and starts serving."""
        self._loops = list(loops)
        self._kick = kick
        for loop in self._loops:
            loop.debug_handler = self._debug_exit
            loop.kick_handlers.append(self._interrupted)
            loop.vcpu.set_immediate_exit()
        self._thread = threading.Thread(target=self._serve, name="pyvmm-gdb", daemon=True)
        self._thread.start()

    def finish(self, result):
        """The run is over (every vCPU thread has ended): tell gdb, end the session."""
        with self._cond:
            if self._finished is None:
                self._finished = result if result is not None else False
            self._cond.notify_all()
        self._wake()
        if self._thread is not None:
            self._thread.join(10)

    def close(self):
        self._closing = True
        with self._cond:
            if self._finished is None:
                self._finished = False
            self._cond.notify_all()
        self._wake()
        if self._thread is not None:
            self._thread.join(10)
            self._thread = None
        if self._listener is not None:
            self._listener.close()
            self._listener = None
        for fd in (self._wake_r, self._wake_w):
            if fd is not None:
                os.close(fd)
        self._wake_r = self._wake_w = None

    def _wake(self):
        try:
            os.write(self._wake_w, b"!")
        except (OSError, TypeError):
            pass

    def _drain(self):
        try:
            while os.read(self._wake_r, 4096):
                pass
        except (BlockingIOError, OSError):
            pass

    def _over(self):
        return self._finished is not None or self.machine.stop.requested

    # --- vCPU threads ------------------------------------------------------------------------
    def _interrupted(self, loop):
        """A kick handler: a kicked vCPU parks unless it may run."""
        if loop.vcpu.index not in self._runnable:
            self._park(loop.vcpu.index)

    def _park(self, index):
        stop = self.machine.stop
        with self._cond:
            self._parked.add(index)
            self._cond.notify_all()
            while index not in self._runnable and not stop.requested:
                self._cond.wait(PARK_POLL)
            self._parked.discard(index)

    def _debug_exit(self, loop, exit):
        """debug_handler: True when the exit was the debugger's (the vCPU
        then parks until resumed), False to let the run loop handle it."""
        vcpu = loop.vcpu
        try:
            kind = self._classify(vcpu, exit)
        except (KvmError, GuestMemoryError):
            kind = None
        if kind is None:
            return False
        if not self._active:
            return isinstance(exit, DebugExit)    # a late exit after detach: run on
        with self._cond:
            self._events.append(StopEvent(tid=vcpu.index + 1, signal=SIGTRAP, kind=kind))
            self._runnable.discard(vcpu.index)
            self._cond.notify_all()
        self._wake()
        self._park(vcpu.index)
        return True

    def _classify(self, vcpu, exit):
        """What a debug-related exit means: swbreak, hwbreak, step, trap, or None."""
        if isinstance(exit, InternalErrorExit):
            # kvm_pvm's emulator cannot execute int3: an emulation failure at
            # one of our breakpoints is the breakpoint hit, RIP still on it.
            if not exit.is_emulation_failure:
                return None
            breakpoint = self._sw.get(vcpu.get_regs().rip)
            if breakpoint is None or self.machine.memory.read_u8(breakpoint.phys) != INT3:
                return None
            return "swbreak"
        if not isinstance(exit, DebugExit):
            return None
        if exit.exception == BP_VECTOR:
            regs = vcpu.get_regs()
            if regs.rip in self._sw:
                return "swbreak"
            # The guest's own int3: step past it, as it does on bare metal.
            phys = self._translate(vcpu, regs.rip)
            if phys is not None and self.machine.memory.contains(phys) and \
                    self.machine.memory.read_u8(phys) == INT3:
                regs.rip += 1
                vcpu.set_regs(regs)
            return "trap"
        if exit.exception == DB_VECTOR:
            if exit.dr6 & DR6_BS:
                return "step"
            if exit.dr6 & DR6_HIT:
                return "hwbreak"
        return "trap"

    # --- stopping and resuming (stub thread) ----------------------------------------------------
    def _halt_all(self):
        """Makes every vCPU park; returns when they all have (or the run ended)."""
        count = len(self._loops)
        with self._cond:
            self._runnable = set()
        while True:
            with self._cond:
                if len(self._parked) >= count or self._over():
                    return
                missing = [index for index in range(count) if index not in self._parked]
            for index in missing:
                self._kick(index)
            with self._cond:
                self._cond.wait(0.01)

    def _take_event(self):
        with self._cond:
            return self._events.pop(0) if self._events else None

    def _resume(self, plan):
        """Resumes {tid: "c" or "s"}; returns a StopEvent when the resume
        already ended in a stop (a step over a breakpoint), else None."""
        actions = {tid - 1: action for tid, action in plan.items()}
        for index, action in actions.items():
            lifted = self._breakpoint_at_pc(index)
            if lifted is None:
                continue
            event = self._step_over(index, lifted)
            if event is None:
                return None                       # the run ended meanwhile
            if action == "s" or event.kind != "step":
                return event
        with self._cond:
            self._events.clear()
        for index, action in actions.items():
            self._set_debug(index, step=action == "s")
        with self._cond:
            self._runnable = set(actions)
            self._cond.notify_all()
        return None

    def _breakpoint_at_pc(self, index):
        rip = self._vcpu(index).get_regs().rip
        if rip in self._sw:
            return ("sw", rip)
        if rip in self._hw:
            return ("hw", self._hw.index(rip))
        return None

    def _step_over(self, index, lifted):
        """One instruction with the breakpoint under RIP lifted, then back in."""
        kind, where = lifted
        memory = self.machine.memory
        breakpoint = self._sw[where] if kind == "sw" else None
        if breakpoint is not None:
            memory.write_u8(breakpoint.phys, breakpoint.original)
        try:
            self._set_debug(index, step=True, skip_slot=where if kind == "hw" else None)
            with self._cond:
                self._events.clear()
                self._runnable = {index}
                self._cond.notify_all()
            deadline = time.monotonic() + STEP_TIMEOUT
            event = None
            with self._cond:
                while not self._events and not self._over() and time.monotonic() < deadline:
                    self._cond.wait(PARK_POLL)
                if self._events:
                    event = self._events.pop(0)
                self._events.clear()
            self._halt_all()
        finally:
            if breakpoint is not None and self._sw.get(where) is breakpoint:
                memory.write_u8(breakpoint.phys, INT3)
        if self._over():
            return None
        return event or StopEvent(tid=index + 1, signal=SIGTRAP)

    def _set_debug(self, index, step=False, skip_slot=None):
        debugreg = None
        slots = [None if slot == skip_slot else address for slot, address in enumerate(self._hw)]
        if any(address is not None for address in slots):
            debugreg = [0] * 8
            dr7 = DR7_FIXED
            for slot, address in enumerate(slots):
                if address is not None:
                    debugreg[slot] = address
                    dr7 |= 2 << (2 * slot)          # G0-G3, execute, 1 byte
            debugreg[7] = dr7
        self._vcpu(index).set_guest_debug(software_breakpoints=bool(self._sw), single_step=step,
                                          debugreg=debugreg)

    def _kill(self):
        self.machine.stop.request(STATUS_OK, "gdb-kill", "killed by gdb")

    def _end_session(self):
        """After D or a dropped connection: every breakpoint out, guest
        debugging off, and the guest runs on without the stub."""
        if not self._over() and self._loops:
            self._halt_all()
            for breakpoint in self._sw.values():
                try:
                    if self.machine.memory.read_u8(breakpoint.phys) == INT3:
                        self.machine.memory.write_u8(breakpoint.phys, breakpoint.original)
                except GuestMemoryError:
                    pass
            for loop in self._loops:
                try:
                    loop.vcpu.set_guest_debug(enable=False)
                except KvmError:
                    pass
        self._sw.clear()
        self._hw = [None] * HW_SLOTS
        with self._cond:
            self._active = False
            self._runnable = set(range(len(self._loops)))
            self._cond.notify_all()

    # --- the target interface for Commands ------------------------------------------------------
    def threads(self):
        return [index + 1 for index in range(len(self.machine.vcpus))]

    def thread_name(self, tid):
        return f"vCPU {tid - 1}"

    def _vcpu(self, index):
        return self.machine.vcpus[index]

    def read_registers(self, tid):
        vcpu = self._vcpu(tid - 1)
        try:
            regs, sregs, fpu = vcpu.get_regs(), vcpu.get_sregs(), vcpu.get_fpu()
        except KvmError as error:
            raise TargetError(str(error), E_REFUSED) from None
        try:
            kernel_gs_base = vcpu.get_msrs([MSR_KERNEL_GS_BASE])[MSR_KERNEL_GS_BASE]
        except KvmError:
            kernel_gs_base = 0
        return registers.from_kvm(regs, sregs, fpu, kernel_gs_base)

    def write_registers(self, tid, values):
        vcpu = self._vcpu(tid - 1)
        try:
            regs, sregs, fpu = vcpu.get_regs(), vcpu.get_sregs(), vcpu.get_fpu()
            try:
                kernel_gs_base = vcpu.get_msrs([MSR_KERNEL_GS_BASE])[MSR_KERNEL_GS_BASE]
            except KvmError:
                kernel_gs_base = 0
            old = registers.from_kvm(regs, sregs, fpu, kernel_gs_base)
            parts = registers.to_kvm(old, values, regs, sregs, fpu)
            if "regs" in parts:
                vcpu.set_regs(regs)
            if "sregs" in parts:
                vcpu.set_sregs(sregs)
            if "fpu" in parts:
                vcpu.set_fpu(fpu)
            if "k_gs_base" in parts:
                vcpu.set_msrs({MSR_KERNEL_GS_BASE: values["k_gs_base"]})
        except (KvmError, registers.RegisterWriteError) as error:
            raise TargetError(str(error), E_REFUSED) from None

    def _translate(self, vcpu, address):
        """Guest-physical address of a virtual one, or None when unmapped."""
        try:
            phys, valid, _ = vcpu.translate(address)
        except (KvmError, OverflowError):
            return None
        return phys if valid else None

    def _pages(self, tid, address, length):
        """(phys, length) for each page of [address, address+length), stopping
        at the first that is unmapped or not in guest RAM."""
        vcpu = self._vcpu(tid - 1)
        memory = self.machine.memory
        chunks, end = [], address + length
        while address < end:
            size = min(end, (address | (PAGE_SIZE - 1)) + 1) - address
            phys = self._translate(vcpu, address)
            if phys is None or not memory.contains(phys, size):
                break
            chunks.append((phys, size))
            address += size
        return chunks

    def read_memory(self, tid, address, length):
        memory = self.machine.memory
        data = bytearray()
        for phys, size in self._pages(tid, address, length):
            chunk = bytearray(memory.read(phys, size))
            for breakpoint in self._sw.values():     # show the original bytes
                if phys <= breakpoint.phys < phys + size:
                    chunk[breakpoint.phys - phys] = breakpoint.original
            data += chunk
        if not data:
            raise TargetError(f"cannot read guest address {address:#x}", E_FAULT)
        return bytes(data)

    def write_memory(self, tid, address, data):
        pages = self._pages(tid, address, len(data))
        if sum(size for _, size in pages) != len(data):
            raise TargetError(f"cannot write guest address {address:#x}", E_FAULT)
        memory, offset = self.machine.memory, 0
        for phys, size in pages:
            chunk = bytearray(data[offset:offset + size])
            for breakpoint in self._sw.values():     # keep our int3 in place
                if phys <= breakpoint.phys < phys + size:
                    breakpoint.original = chunk[breakpoint.phys - phys]
                    chunk[breakpoint.phys - phys] = INT3
            memory.write(phys, bytes(chunk))
            offset += size

    def insert_breakpoint(self, kind, address, tid):
        if kind == 0:
            if address in self._sw:
                return
            pages = self._pages(tid, address, 1)
            if not pages:
                raise TargetError(f"cannot set a breakpoint at {address:#x}", E_FAULT)
            phys = pages[0][0]
            memory = self.machine.memory
            self._sw[address] = _SwBreakpoint(phys, memory.read_u8(phys))
            memory.write_u8(phys, INT3)
        else:
            if address in self._hw:
                return
            if None not in self._hw:
                raise TargetError("all four debug registers are in use", E_REFUSED)
            self._hw[self._hw.index(None)] = address

    def remove_breakpoint(self, kind, address, tid):
        if kind == 0:
            breakpoint = self._sw.pop(address, None)
            if breakpoint is not None and self.machine.memory.read_u8(breakpoint.phys) == INT3:
                self.machine.memory.write_u8(breakpoint.phys, breakpoint.original)
        elif address in self._hw:
            self._hw[self._hw.index(address)] = None

    # --- the connection ---------------------------------------------------------------------------
    def _serve(self):
        connection = None
        try:
            sandbox = getattr(self.machine, "sandbox", None)
            if sandbox is not None:
                sandbox.enter("gdb")
            connection = self._accept()
            if connection is not None:
                _Session(self, connection).run()
        except Exception as error:  # a stub bug ends the session, never the VM
            print(f"warning: gdb session ended: {type(error).__name__}: {error}", file=sys.stderr)
        finally:
            try:
                self._end_session()
            except Exception:
                with self._cond:
                    self._active = False
                    self._runnable = set(range(len(self._loops)))
                    self._cond.notify_all()
            if connection is not None:
                connection.close()
            if self._listener is not None:
                self._listener.close()
                self._listener = None

    def _accept(self):
        """Waits for gdb; None if the run ends first. One connection per run."""
        while self._finished is None and not self._closing:
            readable, _, _ = select.select([self._listener, self._wake_r], [], [], 0.5)
            if self._wake_r in readable:
                self._drain()
            if self._listener in readable:
                try:
                    connection, _ = self._listener.accept()
                except OSError:
                    continue
                self._listener.close()
                self._listener = None
                connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                connection.settimeout(SEND_TIMEOUT)
                return connection
        return None


class _Session:
    """One gdb connection: framing, acks, and the all-stop state machine."""

    def __init__(self, stub, connection):
        self.stub = stub
        self.connection = connection
        self.decoder = Decoder()
        self.commands = Commands(stub)
        self.noack = False
        self.running = False
        self.last_packet = None

    def run(self):
        stub = self.stub
        stub._halt_all()              # every vCPU stopped before its first instruction
        try:
            while True:
                if stub._finished is not None:
                    if self.running and stub._finished:
                        self.send(self.commands.stopped(StopEvent(exit_status=stub._finished.status)))
                    return
                if self.running:
                    event = stub._take_event()
                    if event is not None:
                        self._stopped(event)
                readable, _, _ = select.select([self.connection, stub._wake_r], [], [], 0.5)
                if stub._wake_r in readable:
                    stub._drain()
                if self.connection in readable:
                    try:
                        data = self.connection.recv(RECV_SIZE)
                    except OSError:
                        data = b""
                    if not data:
                        return                      # gdb went away: detach
                    for kind, value in self.decoder.feed(data):
                        if self._handle(kind, value):
                            return
        except _Dropped:
            return

    def _stopped(self, event):
        self.stub._halt_all()
        with self.stub._cond:
            self.stub._events.clear()
        self.running = False
        if not self.stub._over():
            self.send(self.commands.stopped(event))

    def send(self, payload):
        packet = frame(payload)
        self.last_packet = packet
        self._write(packet)

    def _write(self, data):
        try:
            self.connection.sendall(data)
        except OSError:
            raise _Dropped() from None

    def _handle(self, kind, value):
        """One event from the decoder; True ends the session."""
        if kind == "interrupt":
            if self.running:
                self.stub._halt_all()
                event = self.stub._take_event() or StopEvent(
                    tid=self.commands.last_stop.tid or 1, signal=SIGINT)
                self._stopped(event)
            return False
        if kind == "ack":
            return False
        if kind == "nak":
            if not self.noack and self.last_packet is not None:
                self._write(self.last_packet)
            return False
        if kind == "bad":
            if self.noack:
                self.send(error_reply(E_MALFORMED))
            else:
                self._write(NAK)
            return False
        if not self.noack:
            self._write(ACK)
        if kind == "toolong":
            self.send(error_reply(E_MALFORMED))
            return False
        if self.running:                            # all-stop: only Ctrl-C while running
            self.send(error_reply(E_MALFORMED))
            return False
        outcome = self.commands.handle(value)
        if outcome.reply is not None:
            self.send(outcome.reply)
        if outcome.action == "noack":
            self.noack = True
        elif outcome.action == "resume":
            event = self.stub._resume(outcome.resume)
            self.running = True
            if event is not None:
                self._stopped(event)
        elif outcome.action == "kill":
            self.stub._kill()
            return True
        elif outcome.action == "detach":
            return True
        return False
