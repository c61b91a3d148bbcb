"""The gdb stub without KVM: framing, the commands over a fake target, the
register layout, and a session fed arbitrary bytes."""

import threading
import xml.etree.ElementTree as ElementTree

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pyvmm._kvm import ffi
from pyvmm.gdb import registers
from pyvmm.gdb.commands import (E_FAULT, E_REFUSED, SUPPORTED, Commands, Outcome, StopEvent,
                                TargetError)
from pyvmm.gdb.packets import (MAX_PACKET, Decoder, PacketError, checksum, error_reply, escape,
                               frame, parse_address_length, parse_hex, parse_thread_id)
from pyvmm.gdb.stub import _Session

MAPPED_START, MAPPED_END = 0x1000, 0x3000


class FakeTarget:
    """Two threads, registers in dicts, memory mapped at [0x1000, 0x3000)."""

    def __init__(self):
        self.values = {tid: {reg.name: 0 for reg in registers.REGISTERS} for tid in (1, 2)}
        self.memory = bytearray(MAPPED_END - MAPPED_START)
        self.sw, self.hw = set(), set()

    def threads(self):
        return [1, 2]

    def thread_name(self, tid):
        return f"vCPU {tid - 1}"

    def read_registers(self, tid):
        return dict(self.values[tid])

    def write_registers(self, tid, values):
        if values["cs"] != self.values[tid]["cs"]:
            raise TargetError("selector", E_REFUSED)
        self.values[tid] = dict(values)

    def read_memory(self, tid, address, length):
        if not MAPPED_START <= address < MAPPED_END:
            raise TargetError("unmapped", E_FAULT)
        end = min(address + length, MAPPED_END)
        return bytes(self.memory[address - MAPPED_START:end - MAPPED_START])

    def write_memory(self, tid, address, data):
        if not (MAPPED_START <= address and address + len(data) <= MAPPED_END):
            raise TargetError("unmapped", E_FAULT)
        self.memory[address - MAPPED_START:address - MAPPED_START + len(data)] = data

    def insert_breakpoint(self, kind, address, tid):
        table = self.sw if kind == 0 else self.hw
        if kind == 1 and len(table) >= 4 and address not in table:
            raise TargetError("no debug register", E_REFUSED)
        if kind == 0:
            self.read_memory(tid, address, 1)
        table.add(address)

    def remove_breakpoint(self, kind, address, tid):
        (self.sw if kind == 0 else self.hw).discard(address)


def handle(commands, payload):
    outcome = commands.handle(payload)
    assert isinstance(outcome, Outcome)
    return outcome


def reply(commands, payload):
    return handle(commands, payload).reply


@pytest.fixture
def target():
    return FakeTarget()


@pytest.fixture
def commands(target):
    return Commands(target)


# --- framing -------------------------------------------------------------------------
def test_frame_escapes_and_checksums():
    assert frame(b"OK") == b"$OK#9a"
    assert escape(b"a#b$c}d*") == b"a}\x03b}\x04c}]d}\x0a"
    body = escape(b"#")
    assert frame(b"#") == b"$" + body + b"#%02x" % checksum(body)


def test_decoder_events():
    decoder = Decoder()
    assert decoder.feed(b"+-\x03junk$OK#9a") == [("ack", None), ("nak", None), ("interrupt", None),
                                                   ("packet", b"OK")]
    assert decoder.feed(b"$OK#00") == [("bad", "checksum mismatch")]
    assert decoder.feed(b"$OK#zz") == [("bad", "checksum is not two hex digits")]
    assert decoder.feed(b"$a$OK#9a") == [("bad", "packet restarted before its end"), ("packet", b"OK")]
    escaped = frame(b"X1,1:}")
    assert decoder.feed(escaped) == [("packet", b"X1,1:}")]


def test_decoder_takes_packets_byte_by_byte():
    decoder = Decoder()
    events = []
    for byte in frame(b"m1000,4") + b"$?#3f":
        events += decoder.feed(bytes((byte,)))
    assert events == [("packet", b"m1000,4"), ("packet", b"?")]


def test_decoder_refuses_a_packet_longer_than_packetsize():
    decoder = Decoder(max_packet=8)
    body = b"m" * 20
    assert decoder.feed(b"$" + body + b"#%02x" % checksum(body)) == [("toolong", None)]
    assert decoder.feed(b"$" + body + b"#00") == [("bad", "checksum mismatch")]
    assert decoder.feed(b"$OK#9a") == [("packet", b"OK")]


@given(st.binary(max_size=2000))
def test_decoder_never_raises_and_bounds_its_packets(data):
    decoder = Decoder(max_packet=64)
    for kind, value in decoder.feed(data):
        assert kind in ("packet", "bad", "toolong", "interrupt", "ack", "nak")
        if kind == "packet":
            assert len(value) <= 64


@given(st.binary(max_size=300), st.data())
def test_frame_then_decode_is_the_identity(payload, data):
    wire = frame(payload)
    cut = data.draw(st.integers(0, len(wire)))
    decoder = Decoder()
    assert decoder.feed(wire[:cut]) + decoder.feed(wire[cut:]) == [("packet", payload)]


def test_argument_parsers():
    assert parse_hex(b"1f") == 0x1F
    assert parse_address_length(b"ffffffffffffffff,1", 16) == ((1 << 64) - 1, 1)
    assert parse_thread_id(b"-1") == -1 and parse_thread_id(b"p1.2") == 2
    for bad in (b"", b"xyz", b"1" * 17):
        with pytest.raises(PacketError):
            parse_hex(bad)
    for bad in (b"10", b"10,", b"ffffffffffffffff,2", b"0,11"):
        with pytest.raises(PacketError):
            parse_address_length(bad, 16)
    assert error_reply(14) == b"E14" and error_reply(1) == b"E01"


# --- commands ---------------------------------------------------------------------------
def test_queries(commands):
    assert reply(commands, b"qSupported:multiprocess+;swbreak+;hwbreak+") == SUPPORTED
    assert b"PacketSize=4000" in SUPPORTED
    assert reply(commands, b"?") == b"T05thread:1;"
    assert reply(commands, b"qAttached") == b"1"
    assert reply(commands, b"qC") == b"QC1"
    assert reply(commands, b"qfThreadInfo") == b"m1,2"
    assert reply(commands, b"qsThreadInfo") == b"l"
    assert bytes.fromhex(reply(commands, b"qThreadExtraInfo,2").decode()) == b"vCPU 1"
    assert reply(commands, b"vCont?") == b"vCont;c;C;s;S;t"
    assert reply(commands, b"vMustReplyEmpty") == b""
    assert reply(commands, b"qTStatus") == b""
    assert handle(commands, b"QStartNoAckMode").action == "noack"


def test_target_xml_describes_the_g_packet(commands):
    document, offset = b"", 0
    while True:
        chunk = reply(commands, b"qXfer:features:read:target.xml:%x,%x" % (offset, 100))
        document += chunk[1:]
        offset += len(chunk) - 1
        if chunk[:1] == b"l":
            break
        assert chunk[:1] == b"m"
    assert document == registers.TARGET_XML
    root = ElementTree.fromstring(document.split(b"?>", 1)[1].split(b">", 1)[1])
    assert root.find("architecture").text == "i386:x86-64"
    features = [feature.get("name") for feature in root.findall("feature")]
    assert features == ["org.gnu.gdb.i386.core", "org.gnu.gdb.i386.sse",
                        "org.gnu.gdb.i386.segments", "org.pyvmm.gdb.x86-64.system"]
    regs = root.findall("feature/reg")
    assert [int(reg.get("regnum")) for reg in regs] == list(range(len(registers.REGISTERS)))
    assert sum(int(reg.get("bitsize")) for reg in regs) == 8 * registers.G_PACKET_BYTES
    names = [reg.get("name") for reg in regs]
    assert names[:18] == list(registers.GPRS) + ["rip", "eflags"]
    assert names[-7:] == ["k_gs_base", "cr0", "cr2", "cr3", "cr4", "cr8", "efer"]
    assert reply(commands, b"qXfer:features:read:other.xml:0,10") == b"E00"
    assert reply(commands, b"qXfer:features:read:target.xml:zz,10") == b"E01"


def test_registers_read_and_write(commands, target):
    target.values[1]["rip"] = 0x200030
    target.values[1]["cr3"] = 0x1000
    data = reply(commands, b"g")
    assert len(data) == 2 * registers.G_PACKET_BYTES
    raw = bytes.fromhex(data.decode())
    assert registers.unpack(raw)["rip"] == 0x200030
    rip = registers.NUMBERS["rip"]
    assert reply(commands, b"p%x" % rip) == (0x200030).to_bytes(8, "little").hex().encode()
    assert reply(commands, b"P%x=%s" % (rip, (0x1234).to_bytes(8, "little").hex().encode())) == b"OK"
    assert target.values[1]["rip"] == 0x1234
    assert reply(commands, b"G" + data) == b"OK"
    assert target.values[1]["rip"] == 0x200030
    assert reply(commands, b"G" + data[:-2]) == b"E01"
    assert reply(commands, b"p%x" % len(registers.REGISTERS)) == b"E01"
    assert reply(commands, b"P%x=00" % rip) == b"E01"
    cs = registers.NUMBERS["cs"]
    assert reply(commands, b"P%x=18000000" % cs) == b"E03"
    assert reply(commands, b"Hg2") == b"OK"
    assert registers.unpack(bytes.fromhex(reply(commands, b"g").decode()))["rip"] == 0
    assert reply(commands, b"Hg9") == b"E02"
    assert reply(commands, b"T2") == b"OK" and reply(commands, b"T9") == b"E02"


def test_memory(commands, target):
    target.memory[0:4] = b"\x01\x02\x03\x04"
    assert reply(commands, b"m1000,4") == b"01020304"
    assert reply(commands, b"m2ffe,4") == b"0000"            # partial: up to the unmapped end
    assert reply(commands, b"m5000,4") == b"E14"
    assert reply(commands, b"M1000,2:aabb") == b"OK"
    assert target.memory[0:2] == b"\xaa\xbb"
    assert reply(commands, b"X1002,2:\x00}") == b"OK"
    assert target.memory[2:4] == b"\x00}"
    assert reply(commands, b"X1000,0:") == b"OK"
    assert reply(commands, b"M1000,2:aa") == b"E01"
    assert reply(commands, b"M1000,1:zz") == b"E01"
    assert reply(commands, b"M5000,1:00") == b"E14"
    assert reply(commands, b"m1000") == b"E01"
    assert reply(commands, b"mffffffffffffffff,2") == b"E01"


def test_breakpoints(commands, target):
    assert reply(commands, b"Z0,1000,1") == b"OK" and target.sw == {0x1000}
    assert reply(commands, b"z0,1000,1") == b"OK" and target.sw == set()
    assert reply(commands, b"Z0,9000,1") == b"E14"
    for address in range(4):
        assert reply(commands, b"Z1,%x,1" % address) == b"OK"
    assert reply(commands, b"Z1,10,1") == b"E03"
    assert reply(commands, b"Z2,1000,4") == b""                 # watchpoints: unsupported
    assert reply(commands, b"Z0,1000,2") == b"E01"
    assert reply(commands, b"Z9,1000,1") == b"E01"
    assert reply(commands, b"Z0,1000,1;X2,0a") == b"OK"         # conditions ignored


def test_resume_and_session_actions(commands):
    assert handle(commands, b"c").resume == {1: "c", 2: "c"}
    assert handle(commands, b"s").resume == {1: "s"}
    assert handle(commands, b"vCont;c").resume == {1: "c", 2: "c"}
    assert handle(commands, b"vCont;s:2;c").resume == {2: "s", 1: "c"}
    assert handle(commands, b"vCont;s:1").resume == {1: "s"}
    assert handle(commands, b"vCont;C05:1;c").resume == {1: "c", 2: "c"}
    assert reply(commands, b"vCont;x") == b"E01"
    assert reply(commands, b"vCont;c:9") == b"E02"
    assert reply(commands, b"vCont;t") == b"E01"
    assert handle(commands, b"k").action == "kill"
    assert handle(commands, b"vKill;a410").action == "kill"
    outcome = handle(commands, b"D")
    assert (outcome.reply, outcome.action) == (b"OK", "detach")


def test_stop_replies(commands):
    reply(commands, b"qSupported:swbreak+")
    assert commands.stopped(StopEvent(tid=2, kind="swbreak")) == b"T05thread:2;swbreak:;"
    assert commands.stopped(StopEvent(tid=2, kind="hwbreak")) == b"T05thread:2;"   # not advertised
    assert commands.stopped(StopEvent(tid=1, signal=2)) == b"T02thread:1;"
    assert reply(commands, b"qC") == b"QC1"
    assert commands.stopped(StopEvent(exit_status=85)) == b"W55"


VALID_PACKETS = [b"?", b"g", b"G" + b"00" * registers.G_PACKET_BYTES, b"p10", b"P10=0000000000000000",
                 b"m1000,10", b"M1000,2:abcd", b"X1000,1:\x7d", b"Z0,1000,1", b"z1,1000,1",
                 b"vCont;s:1;c", b"Hg1", b"Hc-1", b"qXfer:features:read:target.xml:0,ff",
                 b"qSupported:swbreak+", b"qThreadExtraInfo,1", b"T1", b"c", b"s2000", b"C05;3000"]


def check_reply_or_action(payload):
    outcome = Commands(FakeTarget()).handle(payload)
    assert isinstance(outcome, Outcome)
    if outcome.reply is None:
        assert outcome.action in ("resume", "kill")
    else:
        assert isinstance(outcome.reply, bytes)


@settings(max_examples=300)
@given(st.binary(max_size=200))
def test_any_payload_gets_a_reply_or_an_action(payload):
    check_reply_or_action(payload)


@st.composite
def mutated(draw):
    packet = bytearray(draw(st.sampled_from(VALID_PACKETS)))
    for _ in range(draw(st.integers(1, 4))):
        where = draw(st.integers(0, len(packet)))
        what = draw(st.sampled_from(["insert", "delete", "replace"]))
        byte = draw(st.sampled_from(list(b",:;=-#$}*0fFxp\x00\xff")) | st.integers(0, 255))
        if what == "insert":
            packet[where:where] = bytes((byte,))
        elif packet and where < len(packet):
            if what == "delete":
                del packet[where]
            else:
                packet[where] = byte
    return bytes(packet)


@settings(max_examples=500)
@given(mutated())
def test_mutated_packets_never_raise(payload):
    check_reply_or_action(payload)


# --- registers and KVM state -----------------------------------------------------------------
def test_tag_words():
    one = 0x3FFF << 64 | 1 << 63                  # 1.0 as an 80-bit float
    stack = [one, 0, 0x7FFF << 64, 0, 0, 0, 0, 0]
    # TOP = 6: st0 is physical 6, st1 physical 7, st2 physical 0.
    fsw = 6 << 11
    ftwx = 1 << 6 | 1 << 7 | 1 << 0
    word = registers.full_tag_word(fsw, ftwx, stack)
    assert (word >> 12) & 3 == 0 and (word >> 14) & 3 == 1 and word & 3 == 2
    assert all((word >> 2 * physical) & 3 == 3 for physical in range(1, 6))
    assert registers.abridged_tag(word) == ftwx


def test_kvm_state_round_trip():
    regs, sregs = ffi.new("struct kvm_regs *"), ffi.new("struct kvm_sregs *")
    fpu = ffi.new("struct kvm_fpu *")
    regs.rax, regs.rip, regs.rflags = 7, 0x200000, 0x46
    sregs.cs.selector, sregs.cr3, sregs.efer, sregs.fs.base = 0x10, 0x1000, 0x500, 0xABC
    fpu.fcw, fpu.mxcsr = 0x37F, 0x1F80
    fpu.xmm[3][0] = 0x11
    old = registers.from_kvm(regs, sregs, fpu, 0x55)
    assert (old["rax"], old["rip"], old["eflags"], old["cs"], old["cr3"], old["efer"]) == \
        (7, 0x200000, 0x46, 0x10, 0x1000, 0x500)
    assert (old["fs_base"], old["k_gs_base"], old["fctrl"], old["mxcsr"], old["xmm3"]) == \
        (0xABC, 0x55, 0x37F, 0x1F80, 0x11)
    assert old["ftag"] == 0xFFFF
    packed = registers.pack(old)
    assert len(packed) == registers.G_PACKET_BYTES and registers.unpack(packed) == old
    new = dict(old, rbx=9, eflags=0x202, cr3=0x2000, gs_base=0x77, st1=0x3FFF << 64 | 1 << 63,
               xmm15=1 << 127, k_gs_base=0x99, fioff=0x1234, fiseg=0x1)
    parts = registers.to_kvm(old, new, regs, sregs, fpu)
    assert parts == {"regs", "sregs", "fpu", "k_gs_base"}
    assert (regs.rbx, regs.rflags, sregs.cr3, sregs.gs.base) == (9, 0x202, 0x2000, 0x77)
    assert fpu.last_ip == 0x1_0000_1234 and fpu.xmm[15][15] == 0x80
    assert registers.from_kvm(regs, sregs, fpu, 0x99) == new
    with pytest.raises(registers.RegisterWriteError):
        registers.to_kvm(old, dict(old, ss=0x28), regs, sregs, fpu)


# --- a whole session, without KVM ---------------------------------------------------------------
class FakeStub(FakeTarget):
    """FakeTarget plus the calls _Session makes; a resume stops at once."""

    def __init__(self):
        super().__init__()
        self._cond = threading.Condition()
        self._events = []
        self._finished = None
        self.killed = False

    def _halt_all(self):
        pass

    def _take_event(self):
        return None

    def _over(self):
        return False

    def _resume(self, plan):
        return StopEvent(tid=sorted(plan)[0], kind=None)

    def _kill(self):
        self.killed = True


class FakeConnection:
    def __init__(self):
        self.sent = bytearray()

    def sendall(self, data):
        self.sent += data


def run_session(data):
    """Feeds `data` to a session; returns (decoder events of what it sent, ended)."""
    session = _Session(FakeStub(), FakeConnection())
    ended = False
    for kind, value in session.decoder.feed(data):
        if session._handle(kind, value):
            ended = True
            break
    return Decoder(max_packet=1 << 20).feed(bytes(session.connection.sent)), ended


@settings(max_examples=200)
@given(st.lists(st.one_of(mutated(), st.binary(max_size=40)), max_size=8))
def test_every_packet_gets_an_ack_and_one_reply(payloads):
    wire = b"".join(frame(payload) for payload in payloads)
    sent, ended = run_session(wire)
    replies = [value for kind, value in sent if kind == "packet"]
    acks = [kind for kind, _ in sent if kind == "ack"]
    if not ended:
        assert len(replies) == len(payloads)
        noack = [index for index, payload in enumerate(payloads) if payload == b"QStartNoAckMode"]
        assert len(acks) == (noack[0] + 1 if noack else len(payloads))


@settings(max_examples=300)
@given(st.binary(max_size=400))
def test_random_bytes_never_break_the_session(data):
    sent, _ = run_session(data)
    assert all(kind in ("packet", "ack", "nak") for kind, _ in sent)


def test_session_acks_naks_and_noack_mode():
    sent, _ = run_session(b"$?#00" + frame(b"?") + frame(b"QStartNoAckMode") + b"+" + frame(b"qC")
                          + b"$qC#00")
    assert sent == [("nak", None), ("ack", None), ("packet", b"T05thread:1;"), ("ack", None),
                    ("packet", b"OK"), ("packet", b"QC1"), ("packet", b"E01")]
    body = b"m" * (MAX_PACKET + 1)
    sent, _ = run_session(b"$" + body + b"#%02x" % checksum(body))
    assert sent == [("ack", None), ("packet", b"E01")]
    sent, ended = run_session(frame(b"k") + frame(b"?"))
    assert ended and sent == [("ack", None)]
