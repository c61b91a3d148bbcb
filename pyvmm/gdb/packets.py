"""GDB remote serial protocol framing: packets, acks, escapes, checksums, hex.

A packet on the wire is `$payload#cc`: `cc` is the sum of the payload bytes
(as sent, escapes included) modulo 256 in two hex digits, and `}` escapes
the next byte (XOR 0x20). Between packets travel acknowledgements (`+`,
`-`) and the interrupt byte 0x03. Nothing here touches KVM; every parser of
bytes that came from the network raises PacketError and nothing else.
"""

# The longest payload we accept and the PacketSize we advertise (gdb never
# sends a longer one; a longer one is refused with E01 after its checksum).
MAX_PACKET = 0x4000
INTERRUPT = 0x03
ACK, NAK = b"+", b"-"
MAX_U64 = (1 << 64) - 1

_ESCAPED = frozenset(b"#$}*")
_HEX = frozenset(b"0123456789abcdefABCDEF")


class PacketError(ValueError):
    """A malformed packet: the reply is `E` and the two-digit error number (E01)."""

    def __init__(self, message, errno=1):
        super().__init__(message)
        self.errno = errno

    @property
    def reply(self):
        return error_reply(self.errno)


def error_reply(errno):
    """`E` and two digits, written as the errno in decimal as QEMU does (E14:
    EFAULT); gdb only checks that it is an error."""
    return b"E%02d" % min(max(errno, 0), 99)


def checksum(data):
    return sum(data) & 0xFF


def escape(payload):
    """Escapes the bytes the framing reserves (`#`, `$`, `}`, `*`)."""
    if not any(byte in _ESCAPED for byte in payload):
        return bytes(payload)
    out = bytearray()
    for byte in payload:
        if byte in _ESCAPED:
            out += bytes((0x7D, byte ^ 0x20))
        else:
            out.append(byte)
    return bytes(out)


def frame(payload):
    """The wire form of a reply payload: `$escaped#cc`."""
    body = escape(payload)
    return b"$" + body + b"#%02x" % checksum(body)


class Decoder:
    """Splits the byte stream from gdb into events, whatever the bytes are.

    feed(data) returns a list of (kind, value):
      ("packet", payload)   a complete packet with a good checksum, unescaped
      ("bad", reason)       a bad checksum or broken framing: NAK it
      ("toolong", None)     a good checksum but longer than MAX_PACKET
      ("interrupt", None)   0x03 outside a packet (Ctrl-C)
      ("ack", None), ("nak", None)
    Other bytes outside packets are ignored. Memory use is bounded.
    """

    _IDLE, _BODY, _SUM1, _SUM2 = range(4)

    def __init__(self, max_packet=MAX_PACKET):
        self.max_packet = max_packet
        self._state = self._IDLE
        self._reset_packet()

    def _reset_packet(self):
        self._body = bytearray()
        self._sum = 0
        self._escape = False
        self._overflow = False
        self._digits = b""

    def feed(self, data):
        events = []
        for byte in bytes(data):
            state = self._state
            if state == self._IDLE:
                if byte == 0x24:            # $
                    self._reset_packet()
                    self._state = self._BODY
                elif byte == 0x2B:          # +
                    events.append(("ack", None))
                elif byte == 0x2D:          # -
                    events.append(("nak", None))
                elif byte == INTERRUPT:
                    events.append(("interrupt", None))
            elif state == self._BODY:
                if byte == 0x23:            # #
                    self._state = self._SUM1
                elif byte == 0x24:          # $ inside a packet: resynchronise
                    events.append(("bad", "packet restarted before its end"))
                    self._reset_packet()
                else:
                    self._sum = (self._sum + byte) & 0xFF
                    if self._escape:
                        self._escape = False
                        self._append(byte ^ 0x20)
                    elif byte == 0x7D:      # }
                        self._escape = True
                    else:
                        self._append(byte)
            else:
                if byte not in _HEX:
                    events.append(("bad", "checksum is not two hex digits"))
                    self._state = self._IDLE
                    if byte == 0x24:
                        self._reset_packet()
                        self._state = self._BODY
                    continue
                self._digits += bytes((byte,))
                if state == self._SUM1:
                    self._state = self._SUM2
                    continue
                self._state = self._IDLE
                if int(self._digits, 16) != self._sum or self._escape:
                    events.append(("bad", "checksum mismatch"))
                elif self._overflow:
                    events.append(("toolong", None))
                else:
                    events.append(("packet", bytes(self._body)))
                self._reset_packet()
        return events

    def _append(self, byte):
        if len(self._body) >= self.max_packet:
            self._overflow = True
        else:
            self._body.append(byte)


# --- hex and argument parsing ------------------------------------------------
def parse_hex(text, max_digits=16):
    """A non-empty run of hex digits (at most max_digits) -> int."""
    text = bytes(text)
    if not text or len(text) > max_digits or not all(byte in _HEX for byte in text):
        raise PacketError(f"bad hex number {text[:40]!r}")
    return int(text, 16)


def parse_hex_bytes(text):
    """Hex pairs -> bytes."""
    text = bytes(text)
    if len(text) % 2 or not all(byte in _HEX for byte in text):
        raise PacketError("bad hex data")
    return bytes.fromhex(text.decode("ascii"))


def hex_bytes(data):
    return bytes(data).hex().encode("ascii")


def split_once(text, separator):
    """text split at the first separator; PacketError when it is missing."""
    head, found, tail = bytes(text).partition(separator)
    if not found:
        raise PacketError(f"missing {separator!r}")
    return head, tail


def parse_address_length(text, max_length):
    """`addr,length` (hex) -> (addr, length); the range must fit in 64 bits."""
    address, length = split_once(text, b",")
    address, length = parse_hex(address), parse_hex(length)
    if length > max_length:
        raise PacketError(f"length {length:#x} is more than {max_length:#x}")
    if address + length > MAX_U64 + 1:
        raise PacketError("the range wraps around the address space")
    return address, length


def parse_thread_id(text):
    """A thread-id: -1 (all), 0 (any) or a positive number; `pPID.TID` too."""
    text = bytes(text)
    if text.startswith(b"p"):
        _, _, text = text.partition(b".")
        if not text:
            return -1
    if text == b"-1":
        return -1
    return parse_hex(text, max_digits=8)
