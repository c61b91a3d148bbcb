"""Replay an access sequence from inside a real guest, through real KVM exits.

`replay_on_kvm(accesses, devices)` boots the bundled `replay.bin` guest
(guests/replay.S) in a Machine with `devices` registered, after writing the
access program into guest memory; the guest performs each access with the
real instruction (`in`/`out`, `rep ins`/`rep outs`, `mov` and MMX `movq`
for 8-byte MMIO), stores what every read returned, and exits.  The result is
a harness.Report of the same shape `harness.drive` returns, so the same
hypothesis-generated sequence can be compared across both paths.

Program format (little-endian), written at PROGRAM_ADDR (0x200000): an array
of 24-byte records

    u8  kind        0 port I/O, 1 MMIO, 0xff end of program
    u8  direction   0 read, 1 write
    u8  size        port I/O 1, 2, 4; MMIO 1, 2, 4, 8
    u8  reserved    0
    u32 count       port I/O: 1 = one in/out, n > 1 = rep ins/outs of n
                    elements; MMIO: 1
    u64 address     port, or guest-physical MMIO address below 4 GiB
    u64 data        one write: the value (low `size` bytes); rep outs: the
                    guest address of its size*count bytes; reads: 0

The string-output bytes follow the records.  The guest writes at
RESULTS_ADDR (0x300000): u32 magic "RPLY", u32 records done, u32 state
(1 finished, 2 stopped at a bad record), u32 reserved, then the bytes of
every read packed in program order.  It ends with debug-exit value 0x2a
(status STATUS_DONE = 0x55); a bad record gives status 0xff.

Between two accesses the program writes the access's index to a marker
port (MARK_PORT, 4 bytes, outside every device), so each device access
seen on the host is attributed to the access that caused it.

To compare with harness.drive, place the devices where their sentinel
margins are free in the Machine too (the Machine's ranges are kept free
of sentinels here, which the harness does not know about).

Limitations: MMIO addresses must be below 4 GiB (the guest runs without
paging) and must not be guest RAM (the guest has `memory` bytes, 16 MiB by
default) nor a range the Machine already uses; ports and ranges must not
collide with the Machine's own devices (the PC platform: COM1 0x3f8,
debug-exit 0xf4, i8042, CMOS, POST, debugcon, PCI 0xcf8, fw_cfg 0x510,
pc-testdev 0xe0/0x2000/0xff000000, ACPI 0x600, and KVM's in-kernel PIC,
PIT, IOAPIC 0xfec00000 and LAPIC 0xfee00000).
"""

from __future__ import annotations

import struct
from typing import Any, Callable, Iterable, Optional

from .harness import Outcome, Placement, Report, Rig, as_placements, check_outcome
from .strategies import DEFAULT_MARGIN, MMIO, PIO, WRITE, Access

REPLAY_GUEST = "replay.bin"
PROGRAM_ADDR = 0x200000
PROGRAM_LIMIT = 0x100000           # records and string data: up to RESULTS_ADDR
RESULTS_ADDR = 0x300000
RESULTS_HEADER = 16
RESULTS_MAGIC = 0x594C5052         # "RPLY"
STATE_DONE, STATE_BAD = 1, 2
RECORD = struct.Struct("<BBBBIQQ")
KIND_PIO, KIND_MMIO, KIND_END = 0, 1, 0xFF
DIR_READ, DIR_WRITE = 0, 1
STATUS_DONE = (0x2A << 1) | 1
STATUS_BAD = (0x7F << 1) | 1
MARK_PORT = 0x5F0
MARK_LENGTH = 4
DEFAULT_MEMORY = 16 << 20
DEFAULT_TIMEOUT = 20
FOUR_GIB = 1 << 32


class ReplayError(RuntimeError):
    """The replay guest did not run the program to its end."""


class _Marker:
    """The marker port: each write closes the events of one access."""

    def __init__(self, events: list) -> None:
        self.events = events
        self.boundaries: list[tuple[int, int]] = []  # (access index, len(events) at the mark)

    def read(self, offset: int, size: int) -> bytes:
        return b"\xff" * size

    def write(self, offset: int, data: bytes) -> None:
        self.boundaries.append((int.from_bytes(data, "little"), len(self.events)))


def _record(access: Access, data_addr: int) -> bytes:
    kind = KIND_PIO if access.kind == PIO else KIND_MMIO
    direction = DIR_WRITE if access.is_write else DIR_READ
    value = 0
    if access.is_write:
        value = data_addr if access.count > 1 else int.from_bytes(access.data, "little")
    return RECORD.pack(kind, direction, access.size, 0, access.count, access.address, value)


def encode_program(accesses: Iterable[Access], mark_port: Optional[int] = MARK_PORT,
                   base: int = PROGRAM_ADDR) -> bytes:
    """The program for the replay guest, to be written at `base`: the records
    (each access followed by a marker write of its index, unless
    mark_port is None), the end record, then the string-output data."""
    accesses = list(accesses)
    steps = []
    for index, access in enumerate(accesses):
        steps.append(access)
        if mark_port is not None:
            steps.append(Access(PIO, WRITE, mark_port, 4, 1, index.to_bytes(4, "little")))
    data_addr = base + RECORD.size * (len(steps) + 1)
    records, blobs = [], []
    for access in steps:
        records.append(_record(access, data_addr))
        if access.is_write and access.count > 1:
            blobs.append(access.data)
            data_addr += len(access.data)
    records.append(RECORD.pack(KIND_END, 0, 0, 0, 0, 0, 0))
    program = b"".join(records) + b"".join(blobs)
    if len(program) > PROGRAM_LIMIT:
        raise ValueError(f"the program needs {len(program)} bytes; at most {PROGRAM_LIMIT} fit")
    return program


def _validate(accesses: list, memory: int, mark_port: Optional[int]) -> None:
    for access in accesses:
        if access.kind == MMIO:
            if access.address + access.size > FOUR_GIB:
                raise ValueError(f"{access!r}: the replay guest reaches MMIO below 4 GiB only")
            if access.address < memory:
                raise ValueError(f"{access!r}: that address is guest RAM, not MMIO")
        elif mark_port is not None and (access.address < mark_port + MARK_LENGTH
                                        and mark_port < access.address + access.size):
            raise ValueError(f"{access!r} touches the marker port {mark_port:#x}; pass another mark_port")


def replay_on_kvm(accesses: Iterable[Access], devices: Any = (), *, base: Optional[int] = None,
                  length: Optional[int] = None, kind: str = PIO, margin: int = DEFAULT_MARGIN,
                  sentinels: bool = True, check: bool = True, timeout: float = DEFAULT_TIMEOUT,
                  memory: int = DEFAULT_MEMORY, mark_port: Optional[int] = MARK_PORT,
                  vm_config: Optional[dict] = None, setup: Optional[Callable] = None,
                  inspect: Optional[Callable] = None) -> Report:
    """Performs `accesses` from the replay guest under KVM; returns the Report.

    `devices`: what harness.drive takes (a Rig, Placement(s), or a bare
    device with base=/length=/kind=); they are registered, wrapped in probes
    and with sentinels around them unless given as a Rig, on a fresh
    Machine next to its PC platform.  `devices=()` registers nothing: the
    accesses then reach the Machine's own devices (COM1 ...), unobserved,
    so pass check=False.  `vm_config`: VmConfig overrides (e.g.
    {"exit_path": "fast"}); `setup(machine)` runs before the guest starts
    (feed the UART, register more devices), `inspect(machine)` after it
    stopped, before the Machine closes: its result is `report.inspected`.
    With check=True each outcome is
    checked against the rig's routing, as harness.drive does (which needs
    the marker port; with mark_port=None every device access is reported
    under the first access and nothing is checked).  Raises
    ReplayError if the guest did not finish (the report's `run` holds the
    RunResult), ValueError for accesses the guest cannot make.
    """
    # Imported here: the rest of pyvmm.testing works without KVM.
    from pyvmm import guests
    from pyvmm.config import VmConfig
    from pyvmm.machine import Machine

    accesses = list(accesses)
    _validate(accesses, memory, mark_port)
    options = dict(kernel=guests.path(REPLAY_GUEST), memory=memory, serial="buffer", timeout=timeout)
    options.update(vm_config or {})
    config = VmConfig(**options)
    inspected = None
    with Machine(config) as machine:
        if isinstance(devices, Rig):
            rig = devices
        else:
            reserved = [(PIO, b, n) for b, n, _ in machine.port_bus.ranges()]
            reserved += [(MMIO, b, n) for b, n, _ in machine.mmio_bus.ranges()]
            if mark_port is not None:
                reserved.append((PIO, mark_port, MARK_LENGTH))
            rig = Rig(as_placements(devices, base, length, kind), margin=margin,
                      sentinels=sentinels, reserved=reserved)
        marker = _Marker(rig.events)
        if mark_port is not None:
            machine.add_port_device(mark_port, MARK_LENGTH, marker, name="replay marker")
        rig.register_on(machine.port_bus, machine.mmio_bus)
        if setup is not None:
            setup(machine)
        start = len(rig.events)
        machine.memory.write(PROGRAM_ADDR, encode_program(accesses, mark_port))
        result = machine.run(timeout=timeout)
        if inspect is not None:
            inspected = inspect(machine)
        header = machine.memory.read(RESULTS_ADDR, RESULTS_HEADER)
        magic, done, state, _ = struct.unpack("<IIII", header)
        steps = len(accesses) * (2 if mark_port is not None else 1)
        if result.status != STATUS_DONE or magic != RESULTS_MAGIC or state != STATE_DONE or done != steps:
            raise ReplayError(f"the replay guest did not finish: {result!r}, magic {magic:#x}, "
                              f"state {state}, {done} of {steps} records done")
        total = sum(access.length for access in accesses if not access.is_write)
        read_bytes = machine.memory.read(RESULTS_ADDR + RESULTS_HEADER, total)

    outcomes = []
    position = 0
    edges = [start] + [at for _, at in marker.boundaries]
    if mark_port is not None and [index for index, _ in marker.boundaries] != list(range(len(accesses))):
        raise ReplayError(f"marker writes out of order: {[index for index, _ in marker.boundaries]}")
    for index, access in enumerate(accesses):
        data = None
        if not access.is_write:
            data = read_bytes[position:position + access.length]
            position += access.length
        if mark_port is not None:
            events = list(rig.events[edges[index]:edges[index + 1]])
        else:
            events = list(rig.events[start:]) if index == 0 else []
        outcomes.append(Outcome(access, data, events))
    report = Report(outcomes, run=result, inspected=inspected)
    if check and mark_port is not None:
        for index, outcome in enumerate(outcomes):
            check_outcome(rig, index, outcome)
    return report


__all__ = ["replay_on_kvm", "encode_program", "ReplayError", "Placement", "STATUS_DONE",
           "PROGRAM_ADDR", "RESULTS_ADDR", "RECORD", "MARK_PORT"]
