"""Putting the host terminal in raw input mode for an interactive console.

Like QEMU's `-serial stdio`: keystrokes go to the guest one by one and are
not echoed by the host; output processing stays on and Ctrl-C still stops
pyvmm. The previous settings are always restored.
"""

import contextlib
import os
import termios


@contextlib.contextmanager
def raw_input_mode(fd=0):
    """Raw input on `fd` while the block runs, when it is a terminal."""
    if not os.isatty(fd):
        yield
        return
    saved = termios.tcgetattr(fd)
    settings = termios.tcgetattr(fd)
    iflag, cflag, lflag, control_chars = 0, 2, 3, 6   # output flags (1) stay as they are
    settings[iflag] &= ~(termios.IGNBRK | termios.BRKINT | termios.PARMRK | termios.ISTRIP
                         | termios.INLCR | termios.IGNCR | termios.ICRNL | termios.IXON)
    settings[lflag] &= ~(termios.ECHO | termios.ECHONL | termios.ICANON | termios.IEXTEN)
    settings[cflag] = (settings[cflag] & ~(termios.CSIZE | termios.PARENB)) | termios.CS8
    settings[control_chars][termios.VMIN], settings[control_chars][termios.VTIME] = 1, 0
    termios.tcsetattr(fd, termios.TCSANOW, settings)
    try:
        yield
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)
