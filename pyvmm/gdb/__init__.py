"""A GDB remote-protocol stub for pyvmm guests (`pyvmm run --gdb HOST:PORT`).

packets.py: framing, checksums, escapes and hex parsing; registers.py: the
x86-64 register layout, target.xml and KVM state conversion; commands.py:
the protocol commands over a target; stub.py: the server thread and the
control of the vCPU threads (see its docstring for the design).
"""

from .stub import GdbError, GdbStub

__all__ = ["GdbError", "GdbStub"]
