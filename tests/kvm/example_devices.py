"""A user device for the `--device` tests: importable as example_devices when
tests/kvm is on the path (the tests put it there)."""


class Scratch:
    """A register file of `registers` bytes that reads back what was written,
    starting at `fill`."""

    def __init__(self, registers=4, fill=0):
        self.bytes = bytearray([fill]) * registers

    def read(self, offset, size):
        return bytes(self.bytes[offset:offset + size]).ljust(size, b"\xff")

    def write(self, offset, data):
        self.bytes[offset:offset + len(data)] = data[:max(0, len(self.bytes) - offset)]
