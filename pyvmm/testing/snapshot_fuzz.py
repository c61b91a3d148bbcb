"""Snapshot fuzzing: a guest parks at a known point, the harness checkpoints
it there, and every example runs from that checkpoint with its own input.

The guest's side of the protocol, through the park register: a 32-bit
write to port PARK_PORT (0x5f0), or to MMIO PARK_MMIO (0xe0000000, which a
guest in user mode can reach, where kvm_pvm refuses port I/O whatever the IOPL):

1. It keeps an input descriptor in its memory, {u64 buffer; u32 capacity;
   u32 length} (16 bytes, little-endian), and parks by writing the
   descriptor's guest-physical address to the port. The harness reads the
   buffer's address and capacity there and takes its checkpoint.
2. For each example the harness writes the input into the buffer and its
   length into the descriptor, and runs the guest on.
3. The guest handles the input, then parks again (writing any 32-bit value,
   its answer), or ends the run (debug-exit, a crash, a triple fault...),
   or runs past the timeout.

Then the harness resets the VM to the checkpoint (the pages written since,
the devices, the interrupt controllers, the vCPU: Machine.reset), so the
next example starts from the very same state and every example is
deterministic: a failure shrinks and replays like any hypothesis failure.

    fuzzer = SnapshotFuzzer(VmConfig(kernel=guests.path("fuzz_target.elf")))

    @given(st.binary(max_size=fuzzer.capacity))
    def test_the_parser_never_crashes(data):
        outcome = fuzzer.run(data)
        assert outcome.parked, outcome

The guest runs on the calling thread (Machine.run_until_pause), one vCPU.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Optional

from pyvmm.machine import Machine

PARK_PORT = 0x5F0
PARK_MMIO = 0xE000_0000
DESCRIPTOR = struct.Struct("<QII")
DEFAULT_TIMEOUT = 1.0
BOOT_TIMEOUT = 30.0


class FuzzTargetError(Exception):
    """The guest did not keep the protocol (no first park, a bad descriptor)."""


class ParkPort:
    """The harness's port: a 4-byte write records its value and asks the
    machine to pause there (on the vCPU's thread, at the exit boundary)."""

    def __init__(self, machine):
        self._machine = machine
        self.value: Optional[int] = None
        self.parks = 0

    def read(self, offset, size):
        return bytes(size)

    def write(self, offset, data):
        if offset == 0 and len(data) == 4:
            self.value = int.from_bytes(data, "little")
            self.parks += 1
            self._machine.request_pause()

    def save_state(self):
        return {"value": self.value, "parks": self.parks}

    def restore_state(self, state):
        if not isinstance(state, dict) or set(state) != {"value", "parks"}:
            raise ValueError(f"not a park port's state: {state!r}")
        self.value, self.parks = state["value"], state["parks"]


@dataclass
class Outcome:
    """What one example did. `result` is the machine's RunResult: reason
    "paused" when the guest parked again (`value` is what it wrote), else
    how the run ended ("timeout", "triple-fault", "debug-exit"...); `output`
    is what it printed on the console; `pages_restored` how many pages the
    reset before it copied back."""

    result: object
    value: Optional[int]
    output: bytes
    pages_restored: int

    @property
    def parked(self) -> bool:
        return self.result.reason == "paused"

    @property
    def crashed(self) -> bool:
        return bool(self.result.status == 125)


class SnapshotFuzzer:
    """Boots `config`'s guest to its first park and checkpoints it there; then
    run(data) per example. `machine` is the Machine (its memory and devices
    may be inspected between runs); close() releases it."""

    def __init__(self, config, timeout: float = DEFAULT_TIMEOUT, boot_timeout: float = BOOT_TIMEOUT):
        if config.serial == "stdio":
            config.serial = "buffer"
        self.timeout = timeout
        self.machine = Machine(config)
        try:
            self.park = ParkPort(self.machine)
            self.machine.add_port_device(PARK_PORT, 4, self.park, name="snapshot-fuzz park")
            self.machine.add_mmio_device(PARK_MMIO, 4, self.park, name="snapshot-fuzz park")
            booted = self.machine.run_until_pause(boot_timeout)
            if not booted.reason == "paused" or self.park.value is None:
                raise FuzzTargetError(f"the guest did not park at port {PARK_PORT:#x} ({booted})")
            self.descriptor = self.park.value
            memory = self.machine.memory
            if not memory.contains(self.descriptor, DESCRIPTOR.size):
                raise FuzzTargetError(f"the descriptor at {self.descriptor:#x} is outside guest RAM")
            self.buffer, self.capacity, _ = DESCRIPTOR.unpack(memory.read(self.descriptor, DESCRIPTOR.size))
            if not memory.contains(self.buffer, self.capacity):
                raise FuzzTargetError(f"the input buffer at {self.buffer:#x} ({self.capacity} bytes) "
                                      "is outside guest RAM")
            self.checkpoint = self.machine.checkpoint()
        except BaseException:
            self.machine.close()
            raise
        self._output_start = len(self._console())
        self._fresh = True
        self.examples = 0

    def _console(self):
        return getattr(self.machine.output, "data", b"")

    def run(self, data: bytes) -> Outcome:
        """Runs one example from the checkpoint; ValueError if `data` does not
        fit in the guest's buffer."""
        data = bytes(data)
        if len(data) > self.capacity:
            raise ValueError(f"{len(data)} bytes of input, the guest's buffer holds {self.capacity}")
        pages = 0
        if not self._fresh:
            self.machine.reset(self.checkpoint)
            pages = self.checkpoint.pages_restored
        self._fresh = False
        memory = self.machine.memory
        memory.write(self.buffer, data)
        memory.write_u32(self.descriptor + 12, len(data))
        self.park.value = None
        result = self.machine.run_until_pause(self.timeout)
        self.examples += 1
        value = self.park.value if result.reason == "paused" else None
        return Outcome(result, value, bytes(self._console()[self._output_start:]), pages)

    def close(self):
        self.checkpoint.close()
        self.machine.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
