"""Test devices shared by the KVM tests (pytest puts tests/kvm on sys.path),
and the user device of the `--device` tests (which put it on PYTHONPATH)."""


class Scratch:
    """A register file of `registers` bytes that reads back what was written,
    starting at `fill`."""

    def __init__(self, registers=4, fill=0):
        self.bytes = bytearray([fill]) * registers

    def read(self, offset, size):
        return bytes(self.bytes[offset:offset + size]).ljust(size, b"\xff")

    def write(self, offset, data):
        self.bytes[offset:offset + len(data)] = data[:max(0, len(self.bytes) - offset)]


class Recorder:
    """A test device that logs every access and answers reads from a table."""

    def __init__(self, answers):
        self.answers = answers
        self.log = []

    def read(self, offset, size):
        self.log.append(("read", offset, size))
        value = self.answers.get(offset, 0)
        return (value & ((1 << (8 * size)) - 1)).to_bytes(size, "little")

    def write(self, offset, data):
        self.log.append(("write", offset, bytes(data)))


class Attached:
    """A device that keeps its DeviceContext and ignores its registers."""

    context = None

    def attach(self, context):
        self.context = context

    def read(self, offset, size):
        return bytes(size)

    def write(self, offset, data):
        pass
