"""Intel 8042 PS/2 controller: the PC keyboard controller a kernel probes,
and the classic way to reboot (command 0xFE pulses the CPU reset line).

Behaviour follows QEMU hw/input/pckbd.c (with the keyboard side of
hw/input/ps2.c reduced to its command replies).

Ports: 0x60 is the data port; 0x64 reads the status register and takes
controller commands.  They are not adjacent (0x61 is system control port B,
not part of the 8042), so one `I8042` object exposes two one-port views:
the VMM registers `i8042.data` at 0x60 and `i8042.command` at 0x64, length 1
each (pyvmm/arch/x86_64/layout.py).

Model:
* Status after reset is 0x18 (command/data flag and "keyboard unlocked", as
  QEMU); the self-test command 0xAA sets the system flag, giving the 0x1c
  Linux expects afterwards.  OBF (bit 0) is set while the output buffer
  holds bytes, AUX_OBF (bit 5) when the byte at its head is "from the mouse".
* Controller replies (command byte, self-test 0x55, interface test 0x00,
  input/output port) and keyboard replies go through one FIFO of
  OUTPUT_QUEUE_LIMIT bytes; reading the data port while it is empty returns
  the last byte read (QEMU's ps2_read_data does this for EMM386), 0 at first.
* Command 0xFE and every even 0xF0-0xFE "pulse output port" command, or
  writing the output port (0xD1) with bit 0 clear, call `on_reset()`.
* Unknown controller commands are ignored (QEMU logs and ignores them).
* A minimal keyboard answers data-port bytes like QEMU's PS/2 keyboard:
  0xFA (ACK) to commands, 0xFA 0xAA to reset, 0xFA 0xAB 0x83 (0x41 when the
  controller translates) to "get ID", 0xEE to echo, 0xFE (resend) to unknown
  bytes.  It never produces scan codes.  No mouse is attached: bytes sent to
  it with 0xD4 are dropped.
* `set_irq(line, level)` (optional) drives the KEYBOARD_LINE (IRQ 1 on a
  PC) while keyboard-side data waits and the command byte enables it, and
  the MOUSE_LINE (IRQ 12) for 0xD3 "mouse" bytes, as QEMU's kbd_update_irq.
"""

from __future__ import annotations

import threading
from collections import deque
from typing import Callable, Optional

from .state import StateReader

# The controller's two interrupt outputs (IRQ 1 and IRQ 12 on a PC: the
# machine maps them, see pyvmm/arch/x86_64/layout.py).
KEYBOARD_LINE = "keyboard"
MOUSE_LINE = "mouse"

# Status register bits.
STATUS_OBF = 0x01  # output buffer full: a byte waits at port 0x60
STATUS_SYSTEM_FLAG = 0x04  # set by a successful self-test
STATUS_CMD = 0x08  # last write went to the command port (QEMU keeps it set)
STATUS_UNLOCKED = 0x10  # keyboard not inhibited by the key lock
STATUS_AUX_OBF = 0x20  # the waiting byte comes from the mouse port
RESET_STATUS = STATUS_CMD | STATUS_UNLOCKED

# Command byte ("mode") bits.
MODE_KBD_INT = 0x01
MODE_AUX_INT = 0x02
MODE_DISABLE_KBD = 0x10
MODE_DISABLE_AUX = 0x20
MODE_TRANSLATE = 0x40
RESET_MODE = MODE_KBD_INT | MODE_AUX_INT

# Output port bits.
OUTPORT_RESET = 0x01  # 0 asserts the CPU reset line
OUTPORT_A20 = 0x02
OUTPORT_OBF = 0x10
OUTPORT_AUX_OBF = 0x20
RESET_OUTPORT = 0xCF  # reset line high, A20 on, and QEMU's 0xcc "ones"

# Controller commands (written to port 0x64).
CMD_READ_MODE = 0x20
CMD_WRITE_MODE = 0x60
CMD_DISABLE_AUX = 0xA7
CMD_ENABLE_AUX = 0xA8
CMD_TEST_AUX = 0xA9
CMD_SELF_TEST = 0xAA
CMD_TEST_KBD = 0xAB
CMD_DISABLE_KBD = 0xAD
CMD_ENABLE_KBD = 0xAE
CMD_READ_INPORT = 0xC0
CMD_READ_OUTPORT = 0xD0
CMD_WRITE_OUTPORT = 0xD1
CMD_WRITE_KBD_OBUF = 0xD2
CMD_WRITE_AUX_OBUF = 0xD3
CMD_WRITE_AUX = 0xD4
CMD_DISABLE_A20 = 0xDD
CMD_ENABLE_A20 = 0xDF
CMD_PULSE_RESET = 0xFE
CMD_PULSE_NOTHING = 0xFF
# Commands whose parameter byte follows on the data port.
PARAMETER_COMMANDS = frozenset(
    (CMD_WRITE_MODE, CMD_WRITE_OUTPORT, CMD_WRITE_KBD_OBUF, CMD_WRITE_AUX_OBUF, CMD_WRITE_AUX)
)

SELF_TEST_PASSED = 0x55
INTERFACE_TEST_PASSED = 0x00
INPORT_VALUE = 0x80  # keyboard not locked

# Keyboard commands and replies (PS/2 keyboard behind the controller).
KBD_ACK = 0xFA
KBD_RESEND = 0xFE
KBD_SELF_TEST_PASSED = 0xAA
KBD_ID = (0xAB, 0x83)  # MF2 keyboard; second byte 0x41 when translated
KBD_ID_TRANSLATED = 0x41
KBD_CMD_SET_LEDS = 0xED
KBD_CMD_ECHO = 0xEE
KBD_CMD_SCANCODE = 0xF0
KBD_CMD_GET_ID = 0xF2
KBD_CMD_SET_RATE = 0xF3
KBD_CMD_SET_MAKE_BREAK = 0xFB
KBD_CMD_RESET = 0xFF
KBD_PARAMETER_COMMANDS = frozenset((KBD_CMD_SET_LEDS, KBD_CMD_SCANCODE, KBD_CMD_SET_RATE, KBD_CMD_SET_MAKE_BREAK))
KBD_ACKED_COMMANDS = frozenset((0x00, 0xF4, 0xF5, 0xF6, 0xF7))  # enable/disable/defaults/typematic
# Scan code set numbers as reported through the controller's translation.
TRANSLATED_SCANCODE_SET = {1: 0x43, 2: 0x41, 3: 0x3F}

OUTPUT_QUEUE_LIMIT = 16  # QEMU's PS/2 queue size


class I8042:
    """The controller; register `data` at 0x60 and `command` at 0x64 (1 port each)."""

    def __init__(
        self,
        on_reset: Callable[[], None],
        set_irq: Optional[Callable[[int, bool], None]] = None,
    ) -> None:
        self._on_reset = on_reset
        self._set_irq = set_irq
        self._lock = threading.Lock()
        self._output: deque[tuple[int, bool]] = deque()  # (byte, from the mouse port)
        self._last_read = 0
        self._status = RESET_STATUS
        self._mode = RESET_MODE
        self._outport = RESET_OUTPORT
        self._pending_command = 0  # controller command waiting for its data byte
        self._kbd_pending_command = 0  # keyboard command waiting for its parameter
        self._scancode_set = 2
        self._irq_levels = {KEYBOARD_LINE: False, MOUSE_LINE: False}
        self.reset_requests = 0
        self.data = _Port(self._read_data, self._write_data)
        self.command = _Port(self._read_status, self._write_command)

    # ------------------------------------------------------------ registers

    def _read_status(self) -> int:
        with self._lock:
            return self._status_value()

    def _read_data(self) -> int:
        with self._lock:
            if self._output:
                self._last_read = self._output.popleft()[0]
                self._update_irq()
            return self._last_read

    def _write_command(self, command: int) -> None:
        reset = False
        with self._lock:
            if command & 0xF0 == 0xF0:
                # "Pulse output port bits 3-0 low": only bit 0 (CPU reset) matters.
                command = CMD_PULSE_NOTHING if command & 1 else CMD_PULSE_RESET
            if command == CMD_READ_MODE:
                self._queue(self._mode)
            elif command in PARAMETER_COMMANDS:
                self._pending_command = command
            elif command == CMD_DISABLE_AUX:
                self._mode |= MODE_DISABLE_AUX
            elif command == CMD_ENABLE_AUX:
                self._mode &= ~MODE_DISABLE_AUX
            elif command in (CMD_TEST_AUX, CMD_TEST_KBD):
                self._queue(INTERFACE_TEST_PASSED)
            elif command == CMD_SELF_TEST:
                self._status |= STATUS_SYSTEM_FLAG
                self._queue(SELF_TEST_PASSED)
            elif command == CMD_DISABLE_KBD:
                self._mode |= MODE_DISABLE_KBD
                self._update_irq()
            elif command == CMD_ENABLE_KBD:
                self._mode &= ~MODE_DISABLE_KBD
                self._update_irq()
            elif command == CMD_READ_INPORT:
                self._queue(INPORT_VALUE)
            elif command == CMD_READ_OUTPORT:
                self._queue(self._outport_value())
            elif command == CMD_ENABLE_A20:
                self._outport |= OUTPORT_A20
            elif command == CMD_DISABLE_A20:
                self._outport &= ~OUTPORT_A20
            elif command == CMD_PULSE_RESET:
                reset = True
            # Anything else (0xFF included) is ignored, as in QEMU.
        if reset:
            self._request_reset()

    def _write_data(self, value: int) -> None:
        reset = False
        with self._lock:
            command, self._pending_command = self._pending_command, 0
            if command == 0:
                self._keyboard_write(value)
            elif command == CMD_WRITE_MODE:
                self._mode = value
                self._update_irq()
            elif command == CMD_WRITE_KBD_OBUF:
                self._queue(value)
            elif command == CMD_WRITE_AUX_OBUF:
                self._queue(value, from_aux=True)
            elif command == CMD_WRITE_OUTPORT:
                self._outport = value & ~(OUTPORT_OBF | OUTPORT_AUX_OBF)
                reset = not value & OUTPORT_RESET
            # CMD_WRITE_AUX: no mouse is attached, the byte goes nowhere.
        if reset:
            self._request_reset()

    # ------------------------------------------------------------- keyboard

    def _keyboard_write(self, value: int) -> None:
        """A byte for the keyboard itself (no controller command pending)."""
        command, self._kbd_pending_command = self._kbd_pending_command, 0
        if command == KBD_CMD_SCANCODE:
            if value == 0:  # "which set?"
                current = self._scancode_set
                if self._mode & MODE_TRANSLATE:
                    current = TRANSLATED_SCANCODE_SET[current]
                self._queue(KBD_ACK)
                self._queue(current)
            elif 1 <= value <= 3:
                self._scancode_set = value
                self._queue(KBD_ACK)
            else:
                self._queue(KBD_RESEND)
        elif command:
            self._queue(KBD_ACK)  # LED state, typematic rate, make/break: accepted
        elif value in KBD_PARAMETER_COMMANDS:
            self._kbd_pending_command = value
            self._queue(KBD_ACK)
        elif value == KBD_CMD_GET_ID:
            self._queue(KBD_ACK)
            self._queue(KBD_ID[0])
            self._queue(KBD_ID_TRANSLATED if self._mode & MODE_TRANSLATE else KBD_ID[1])
        elif value == KBD_CMD_ECHO:
            self._queue(KBD_CMD_ECHO)
        elif value == KBD_CMD_RESET:
            self._scancode_set = 2
            self._queue(KBD_ACK)
            self._queue(KBD_SELF_TEST_PASSED)
        elif value in KBD_ACKED_COMMANDS:
            self._queue(KBD_ACK)
        else:
            self._queue(KBD_RESEND)

    # ------------------------------------------------------------ internals

    def _queue(self, value: int, from_aux: bool = False) -> None:
        if len(self._output) < OUTPUT_QUEUE_LIMIT:  # a full queue drops, like QEMU's
            self._output.append((value & 0xFF, from_aux))
            self._update_irq()

    def _head_is_aux(self) -> bool:
        return bool(self._output) and self._output[0][1]

    def _status_value(self) -> int:
        value = self._status
        if self._output:
            value |= STATUS_OBF
            if self._head_is_aux():
                value |= STATUS_AUX_OBF
        return value

    def _outport_value(self) -> int:
        value = self._outport
        if self._output:
            value |= OUTPORT_OBF
            if self._head_is_aux():
                value |= OUTPORT_AUX_OBF
        return value

    def _update_irq(self) -> None:
        kbd = aux = False
        if self._output:
            if self._head_is_aux():
                aux = bool(self._mode & MODE_AUX_INT)
            else:
                kbd = bool(self._mode & MODE_KBD_INT) and not self._mode & MODE_DISABLE_KBD
        for line, level in ((KEYBOARD_LINE, kbd), (MOUSE_LINE, aux)):
            if self._irq_levels[line] != level:
                self._irq_levels[line] = level
                if self._set_irq is not None:
                    self._set_irq(line, level)

    def _request_reset(self) -> None:
        self.reset_requests += 1
        self._on_reset()

    # ------------------------------------------------------------ state

    def save_state(self) -> dict:
        with self._lock:
            return {
                "output": [[value, from_aux] for value, from_aux in self._output],
                "last_read": self._last_read, "status": self._status, "mode": self._mode,
                "outport": self._outport, "pending_command": self._pending_command,
                "kbd_pending_command": self._kbd_pending_command, "scancode_set": self._scancode_set,
                "reset_requests": self.reset_requests,
            }

    def restore_state(self, state: dict) -> None:
        reader = StateReader(state, "i8042")
        output = []
        for item in reader.items("output", OUTPUT_QUEUE_LIMIT):
            if not (isinstance(item, list) and len(item) == 2 and isinstance(item[0], int)
                    and not isinstance(item[0], bool) and 0 <= item[0] <= 0xFF and isinstance(item[1], bool)):
                raise reader.fail("output", f"{item!r} is not [byte, from the mouse]")
            output.append((item[0], item[1]))
        registers = {name: reader.integer(name, 0, 0xFF)
                     for name in ("last_read", "status", "mode", "outport", "kbd_pending_command")}
        pending = reader.integer("pending_command", 0, 0xFF)
        scancode_set = reader.integer("scancode_set", 1, 3)
        reset_requests = reader.integer("reset_requests", 0, 1 << 64)
        reader.finish()
        if pending and pending not in PARAMETER_COMMANDS:
            raise reader.fail("pending_command", f"{pending:#x} takes no parameter")
        if registers["kbd_pending_command"] and registers["kbd_pending_command"] not in KBD_PARAMETER_COMMANDS:
            raise reader.fail("kbd_pending_command", f"{registers['kbd_pending_command']:#x} takes no parameter")
        with self._lock:
            self._output = deque(output)
            self._last_read, self._status, self._mode = registers["last_read"], registers["status"], registers["mode"]
            self._outport, self._kbd_pending_command = registers["outport"], registers["kbd_pending_command"]
            self._pending_command, self._scancode_set = pending, scancode_set
            self.reset_requests = reset_requests
            self._update_irq()          # each line moves only if its level changes

    def register_snapshot(self) -> dict[str, int]:
        """Registers without read side effects (for stats and tests)."""
        with self._lock:
            return {
                "status": self._status_value(),
                "mode": self._mode,
                "outport": self._outport_value(),
                "queued": len(self._output),
            }

    def __repr__(self) -> str:
        return f"I8042(status={self._status_value():#04x}, mode={self._mode:#04x}, queued={len(self._output)})"


class _Port:
    """One 8-bit port of the controller, as a bus device of length 1.

    The bus only routes 1-byte accesses into a 1-port range; should a wider
    range ever be registered, the port answers on its first byte and
    nothing drives the rest (0xFF), and only the first byte of a write counts.
    """

    __slots__ = ("_read", "_write")

    def __init__(self, read: Callable[[], int], write: Callable[[int], None]) -> None:
        self._read = read
        self._write = write

    def read(self, offset: int, size: int) -> bytes:
        if offset != 0:
            return b"\xff" * size
        return bytes((self._read(),)) + b"\xff" * (size - 1)

    def write(self, offset: int, data: bytes) -> None:
        if offset == 0 and data:
            self._write(data[0])
