"""GDB remote protocol commands: one packet in, one reply (and an action) out.

Commands run against a *target* object (the KVM one is in stub.py; tests use
a fake) with these methods, all taking gdb thread ids (vCPU index + 1):

    threads() -> [tid, ...]
    thread_name(tid) -> str
    read_registers(tid) -> {name: int}         (names from registers.py)
    write_registers(tid, {name: int})
    read_memory(tid, address, length) -> bytes (may be shorter than asked)
    write_memory(tid, address, data)
    insert_breakpoint(kind, address, tid), remove_breakpoint(kind, address, tid)
        kind 0: software (int3), 1: hardware (debug registers)

A target method refuses with TargetError(errno); a malformed packet is a
PacketError. Both become an `Exx` reply; nothing else escapes handle().
Error numbers: E01 malformed or unsupported argument, E02 unknown thread,
E03 refused (a selector change, no free debug register, ...), E14 guest
address not mapped or outside guest RAM.
"""

from . import registers
from .packets import (MAX_PACKET, MAX_U64, PacketError, error_reply, hex_bytes,
                      parse_address_length, parse_hex, parse_hex_bytes, parse_thread_id,
                      split_once)

E_MALFORMED, E_THREAD, E_REFUSED, E_FAULT = 1, 2, 3, 14
SIGINT, SIGTRAP = 2, 5
# The longest memory read: its hex must fit in one reply packet.
MAX_READ = (MAX_PACKET - 16) // 2
MAX_WRITE = MAX_PACKET
SUPPORTED = (b"PacketSize=%x;qXfer:features:read+;swbreak+;hwbreak+;QStartNoAckMode+;"
             b"vContSupported+" % MAX_PACKET)
VCONT_ACTIONS = b"vCont;c;C;s;S;t"


class TargetError(Exception):
    """The target refused an operation; the reply is `E` + errno."""

    def __init__(self, message, errno=E_REFUSED):
        super().__init__(message)
        self.errno = errno


class StopEvent:
    """Why the target stopped: a signal for a thread (with `swbreak`/`hwbreak`
    when a breakpoint was hit), or the end of the run (exit_status)."""

    def __init__(self, tid=None, signal=SIGTRAP, kind=None, exit_status=None):
        self.tid = tid
        self.signal = signal
        self.kind = kind
        self.exit_status = exit_status

    def __repr__(self):
        return (f"StopEvent(tid={self.tid}, signal={self.signal}, kind={self.kind!r}, "
                f"exit_status={self.exit_status})")


class Outcome:
    """What to send back (None: nothing yet) and what the session does next:
    None, "resume" (with `resume` = {tid: "c" or "s"}), "kill", "detach", "noack"."""

    __slots__ = ("reply", "action", "resume")

    def __init__(self, reply=None, action=None, resume=None):
        self.reply = reply
        self.action = action
        self.resume = resume

    def __repr__(self):
        return f"Outcome({self.reply!r}, {self.action!r}, {self.resume!r})"


class Commands:
    """The session's protocol state (selected threads, last stop) and dispatch."""

    def __init__(self, target):
        self.target = target
        self.general = 0       # Hg: thread for g/G/p/P/m/M/X/Z; 0 = the stopped one
        self.control = 0       # Hc: thread for the legacy c/s
        self.gdb_features = set()
        self.last_stop = StopEvent(tid=target.threads()[0], signal=SIGTRAP)

    # --- stop replies ---------------------------------------------------------------
    def stopped(self, event):
        """Records a stop; returns its reply packet (T or W)."""
        self.last_stop = event
        if event.exit_status is None:
            self.general = self.control = 0
        return self.stop_reply(event)

    def stop_reply(self, event):
        if event.exit_status is not None:
            return b"W%02x" % (event.exit_status & 0xFF)
        reply = b"T%02xthread:%x;" % (event.signal, event.tid)
        if event.kind in ("swbreak", "hwbreak") and event.kind.encode() + b"+" in self.gdb_features:
            reply += event.kind.encode() + b":;"
        return reply

    # --- dispatch -----------------------------------------------------------------------
    def handle(self, payload):
        """One packet's payload -> Outcome. Never raises for any payload."""
        try:
            return self._dispatch(bytes(payload))
        except PacketError as error:
            return Outcome(error.reply)
        except TargetError as error:
            return Outcome(error_reply(error.errno))

    def _dispatch(self, packet):
        if not packet:
            return Outcome(b"")
        head, rest = packet[:1], packet[1:]
        if head == b"q" or head == b"Q":
            return self._query(packet)
        if head == b"v":
            return self._v_packet(packet)
        handler = self._SIMPLE.get(head)
        if handler is None:
            return Outcome(b"")         # unsupported: the empty reply
        return handler(self, rest)

    # --- queries ---------------------------------------------------------------------------
    def _query(self, packet):
        name, _, args = packet.partition(b":")
        if name == b"qSupported":
            self.gdb_features = set(args.split(b";")) if args else set()
            return Outcome(SUPPORTED)
        if packet == b"QStartNoAckMode":
            return Outcome(b"OK", "noack")
        if name == b"qAttached":
            return Outcome(b"1")        # attached to a running machine: quitting gdb detaches
        if packet == b"qC":
            return Outcome(b"QC%x" % self._thread(0))
        if packet == b"qfThreadInfo":
            return Outcome(b"m" + b",".join(b"%x" % tid for tid in self.target.threads()))
        if packet == b"qsThreadInfo":
            return Outcome(b"l")
        if packet.startswith(b"qThreadExtraInfo,"):
            tid = self._thread(parse_thread_id(packet[len(b"qThreadExtraInfo,"):]))
            return Outcome(hex_bytes(self.target.thread_name(tid).encode()))
        if name == b"qSymbol":
            return Outcome(b"OK")
        if packet.startswith(b"qXfer:"):
            return self._xfer(packet[len(b"qXfer:"):])
        return Outcome(b"")

    def _xfer(self, spec):
        parts = spec.split(b":")
        if len(parts) != 4 or parts[0] != b"features" or parts[1] != b"read":
            return Outcome(b"")
        if parts[2] != b"target.xml":
            raise PacketError("unknown annex", errno=0)
        offset, length = parse_address_length(parts[3], MAX_U64)
        length = min(length, MAX_READ)
        document = registers.TARGET_XML
        chunk = document[offset:offset + length]
        more = offset + length < len(document)
        return Outcome((b"m" if more else b"l") + chunk)

    def _v_packet(self, packet):
        if packet == b"vCont?":
            return Outcome(VCONT_ACTIONS)
        if packet.startswith(b"vCont;"):
            return self._vcont(packet[len(b"vCont;"):])
        if packet.startswith(b"vKill"):
            return Outcome(b"OK", "kill")
        return Outcome(b"")            # vMustReplyEmpty, vFile, vRun, ...: unsupported

    def _vcont(self, text):
        threads = self.target.threads()
        plan = {}
        for item in text.split(b";"):
            action, _, thread = item.partition(b":")
            if not action:
                raise PacketError("empty vCont action")
            kind = action[:1]
            if kind in (b"C", b"S"):
                parse_hex(action[1:], max_digits=2)     # the signal: cannot be delivered, ignored
            elif kind in (b"c", b"s", b"t"):
                if len(action) != 1:
                    raise PacketError("bad vCont action")
            else:
                raise PacketError("unknown vCont action")
            if thread:
                tid = parse_thread_id(thread)
                targets = threads if tid == -1 else [self._thread(tid)]
            else:
                targets = threads
            for tid in targets:
                plan.setdefault(tid, kind.lower().decode())
        resume = {tid: action for tid, action in plan.items() if action in ("c", "s")}
        if not resume:
            raise PacketError("vCont resumes no thread")
        return Outcome(None, "resume", resume)

    # --- single-letter commands --------------------------------------------------------------
    def _status(self, rest):
        return Outcome(self.stop_reply(self.last_stop))

    def _set_thread(self, rest):
        which, tid = rest[:1], parse_thread_id(rest[1:])
        if which not in (b"g", b"c"):
            raise PacketError("H needs g or c")
        if tid not in (-1, 0):
            self._thread(tid)
        if which == b"g":
            self.general = tid
        else:
            self.control = tid
        return Outcome(b"OK")

    def _thread_alive(self, rest):
        tid = parse_thread_id(rest)
        if tid not in self.target.threads():
            return Outcome(error_reply(E_THREAD))
        return Outcome(b"OK")

    def _read_registers(self, rest):
        if rest:
            raise PacketError("g takes no argument")
        values = self.target.read_registers(self._thread(self.general))
        return Outcome(hex_bytes(registers.pack(values)))

    def _write_registers(self, rest):
        data = parse_hex_bytes(rest)
        try:
            values = registers.unpack(data)
        except ValueError as error:
            raise PacketError(str(error)) from None
        self.target.write_registers(self._thread(self.general), values)
        return Outcome(b"OK")

    def _read_register(self, rest):
        number = self._register_number(rest)
        values = self.target.read_registers(self._thread(self.general))
        return Outcome(hex_bytes(registers.pack_one(number, values[registers.REGISTERS[number].name])))

    def _write_register(self, rest):
        number, value = split_once(rest, b"=")
        number = self._register_number(number)
        data = parse_hex_bytes(value)
        if len(data) != registers.SIZES[number]:
            raise PacketError("register value of the wrong size")
        tid = self._thread(self.general)
        values = dict(self.target.read_registers(tid))
        values[registers.REGISTERS[number].name] = int.from_bytes(data, "little")
        self.target.write_registers(tid, values)
        return Outcome(b"OK")

    @staticmethod
    def _register_number(text):
        number = parse_hex(text, max_digits=4)
        if number >= len(registers.REGISTERS):
            raise PacketError(f"no register {number}")
        return number

    def _read_memory(self, rest):
        address, length = parse_address_length(rest, MAX_U64)
        length = min(length, MAX_READ, MAX_U64 + 1 - address)
        if length == 0:
            return Outcome(b"")
        data = self.target.read_memory(self._thread(self.general), address, length)
        return Outcome(hex_bytes(data))

    def _write_memory(self, rest):
        where, data = split_once(rest, b":")
        address, length = parse_address_length(where, MAX_WRITE)
        data = parse_hex_bytes(data)
        return self._write(address, length, data)

    def _write_binary(self, rest):
        where, data = split_once(rest, b":")
        address, length = parse_address_length(where, MAX_WRITE)
        return self._write(address, length, data)

    def _write(self, address, length, data):
        if len(data) != length:
            raise PacketError("data length does not match")
        if length:
            self.target.write_memory(self._thread(self.general), address, data)
        return Outcome(b"OK")

    def _breakpoint(self, rest, insert):
        kind, _, rest = rest.partition(b",")
        address, _, size = rest.partition(b",")
        size = size.split(b";", 1)[0]           # conditions and commands are not supported
        if kind not in (b"0", b"1", b"2", b"3", b"4") or not size:
            raise PacketError("bad breakpoint packet")
        kind, address, size = int(kind), parse_hex(address), parse_hex(size, max_digits=2)
        if kind > 1:
            return Outcome(b"")                 # watchpoints: unsupported
        if size != 1:
            raise PacketError("x86 breakpoints have kind 1")
        tid = self._thread(self.general)
        if insert:
            self.target.insert_breakpoint(kind, address, tid)
        else:
            self.target.remove_breakpoint(kind, address, tid)
        return Outcome(b"OK")

    def _insert_breakpoint(self, rest):
        return self._breakpoint(rest, True)

    def _remove_breakpoint(self, rest):
        return self._breakpoint(rest, False)

    def _continue(self, rest, step, signal):
        if signal:
            sig, _, rest = rest.partition(b";")
            parse_hex(sig, max_digits=2)        # cannot be delivered: ignored
        tid = self._thread(self.control)
        if rest:
            values = dict(self.target.read_registers(tid))
            values["rip"] = parse_hex(rest)
            self.target.write_registers(tid, values)
        if step:
            return Outcome(None, "resume", {tid: "s"})
        return Outcome(None, "resume", {each: "c" for each in self.target.threads()})

    def _kill(self, rest):
        return Outcome(None, "kill")

    def _detach(self, rest):
        if rest and not rest.startswith(b";"):
            raise PacketError("bad detach packet")
        return Outcome(b"OK", "detach")

    _SIMPLE = {
        b"?": _status,
        b"H": _set_thread,
        b"T": _thread_alive,
        b"g": _read_registers,
        b"G": _write_registers,
        b"p": _read_register,
        b"P": _write_register,
        b"m": _read_memory,
        b"M": _write_memory,
        b"X": _write_binary,
        b"Z": _insert_breakpoint,
        b"z": _remove_breakpoint,
        b"c": lambda self, rest: self._continue(rest, False, False),
        b"C": lambda self, rest: self._continue(rest, False, True),
        b"s": lambda self, rest: self._continue(rest, True, False),
        b"S": lambda self, rest: self._continue(rest, True, True),
        b"k": _kill,
        b"D": _detach,
    }

    # --- threads --------------------------------------------------------------------------------
    def _thread(self, tid):
        """A concrete thread: 0 and -1 mean the one that stopped last."""
        if tid in (0, -1):
            tid = self.last_stop.tid
            if tid is None:
                tid = self.target.threads()[0]
        if tid not in self.target.threads():
            raise TargetError(f"no thread {tid}", E_THREAD)
        return tid
