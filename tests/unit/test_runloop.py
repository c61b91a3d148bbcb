"""The run loop's exit dispatch, fuzzed without KVM through a fake vCPU.

Each generated exit is written into a real `struct kvm_run` buffer; the
loop must end every sequence in the documented way and never raise.
"""

import struct

from hypothesis import given, settings, strategies as st

from pyvmm._kvm import ffi, lib
from pyvmm.devices import Bus
from pyvmm.kvm.exits import ExitReader
from pyvmm.run.loop import VcpuLoop
from pyvmm.run.stats import ExitStats
from pyvmm.run.stop import STATUS_CRASH, STATUS_OK, StopSignal

RUN_SIZE = 3 * 4096
EINTR = -4
UNION = ffi.offsetof("struct kvm_run", "io")
HEADER = ffi.sizeof("struct kvm_run")


class FakeVcpu:
    """Plays back exits: each `enter()` writes the next one into kvm_run."""

    index = 0

    def __init__(self, exits):
        self._buffer = bytearray(RUN_SIZE)
        self.run_buffer = memoryview(self._buffer)
        self.run = ffi.from_buffer("struct kvm_run *", self._buffer)
        self.run_size = RUN_SIZE
        self.exits = ExitReader(self.run, self.run_buffer)
        self.to_play = list(exits) + [("hlt",)]
        self.entered = 0

    def enter(self):
        if self.run.immediate_exit:     # as KVM: return at once, nothing played
            return EINTR
        exit = self.to_play[self.entered]
        self.entered += 1
        kind = exit[0]
        if kind == "eintr":
            return EINTR
        run = self.run
        if kind == "io":
            _, direction, size, port, count, offset, data = exit
            run.exit_reason = lib.KVM_EXIT_IO
            run.io.direction, run.io.size, run.io.port = direction, size, port
            run.io.count, run.io.data_offset = count, offset
            if offset >= HEADER:  # KVM's data area never overlaps the header
                end = min(RUN_SIZE, offset + len(data))
                self._buffer[offset:end] = data[:max(0, end - offset)]
        elif kind == "mmio":
            _, addr, length, is_write, data = exit
            run.exit_reason = lib.KVM_EXIT_MMIO
            run.mmio.phys_addr, run.mmio.len, run.mmio.is_write = addr, length, is_write
            struct.pack_into("8s", self._buffer, UNION + 8, data)
        elif kind == "system_event":
            run.exit_reason = lib.KVM_EXIT_SYSTEM_EVENT
            run.system_event.type = exit[1]
        elif kind == "internal":
            run.exit_reason = lib.KVM_EXIT_INTERNAL_ERROR
            run.internal.suberror = exit[1]
        elif kind == "reason":
            run.exit_reason = exit[1]
        else:
            run.exit_reason = getattr(lib, f"KVM_EXIT_{kind.upper()}")
        return 0

    def get_regs(self):
        return ffi.new("struct kvm_regs *", {"rip": 0x1234})

    def set_immediate_exit(self, flag=True):
        self.run.immediate_exit = int(flag)


class Recorder:
    def __init__(self):
        self.accesses = []

    def read(self, offset, size):
        self.accesses.append(("read", offset, size))
        return bytes(range(1, size + 1))

    def write(self, offset, data):
        self.accesses.append(("write", offset, bytes(data)))


CONTINUING_REASONS = {lib.KVM_EXIT_IO, lib.KVM_EXIT_MMIO, lib.KVM_EXIT_IRQ_WINDOW_OPEN,
                      lib.KVM_EXIT_INTR, lib.KVM_EXIT_X86_RDMSR, lib.KVM_EXIT_X86_WRMSR}
TERMINAL_REASONS = {lib.KVM_EXIT_HLT, lib.KVM_EXIT_SHUTDOWN, lib.KVM_EXIT_FAIL_ENTRY,
                    lib.KVM_EXIT_INTERNAL_ERROR, lib.KVM_EXIT_SYSTEM_EVENT}

io_exits = st.tuples(st.just("io"), st.sampled_from([0, 1]), st.sampled_from([1, 2, 4, 0, 3, 8]),
                     st.integers(0, 0xFFFF), st.integers(0, 300),
                     st.integers(0, RUN_SIZE + 64), st.binary(max_size=64))
mmio_exits = st.tuples(st.just("mmio"), st.integers(0, 2**64 - 1), st.integers(0, 16),
                       st.sampled_from([0, 1]), st.binary(min_size=8, max_size=8))
other_exits = st.one_of(
    st.tuples(st.sampled_from(["hlt", "shutdown", "fail_entry", "eintr", "irq_window_open", "intr"])),
    st.tuples(st.just("system_event"), st.integers(0, 10)),
    st.tuples(st.just("internal"), st.integers(0, 6)),
    st.tuples(st.just("reason"), st.integers(0, 200).filter(
        lambda reason: reason not in CONTINUING_REASONS | TERMINAL_REASONS)),
)
exit_sequences = st.lists(st.one_of(io_exits, mmio_exits, other_exits), max_size=12)


def expected_ending(exits):
    """(status, reason) the loop must report for the first exit that ends the run."""
    for exit in exits + [("hlt",)]:
        kind = exit[0]
        if kind == "io":
            _, _, size, _, count, offset, _ = exit
            if size not in (1, 2, 4) or count < 1 or offset + size * count > RUN_SIZE:
                return STATUS_CRASH, "bad-io"
        elif kind == "mmio":
            if not 1 <= exit[2] <= 8:
                return STATUS_CRASH, "bad-mmio"
        elif kind == "hlt":
            return STATUS_OK, "halt"
        elif kind == "shutdown":
            return STATUS_CRASH, "triple-fault"
        elif kind == "fail_entry":
            return STATUS_CRASH, "fail-entry"
        elif kind == "internal":
            return STATUS_CRASH, "internal-error"
        elif kind == "system_event":
            return {lib.KVM_SYSTEM_EVENT_SHUTDOWN: (STATUS_OK, "poweroff"),
                    lib.KVM_SYSTEM_EVENT_RESET: (STATUS_OK, "reset"),
                    lib.KVM_SYSTEM_EVENT_CRASH: (STATUS_CRASH, "guest-crash")}.get(
                        exit[1], (STATUS_CRASH, f"system-event-{exit[1]}"))
        elif kind == "reason":
            return STATUS_CRASH, "unhandled-exit"
    raise AssertionError("unreachable")


def run_loop(exits):
    vcpu = FakeVcpu(exits)
    ports, mmio = Bus.port_io(), Bus.mmio()
    port_device, mmio_device = Recorder(), Recorder()
    ports.register(0, 0x10000, port_device)
    mmio.register(0, 1 << 64, mmio_device)
    stop = StopSignal()
    VcpuLoop(vcpu, ports, mmio, stop, ExitStats()).run()
    return vcpu, stop.result, port_device.accesses, mmio_device.accesses


@settings(max_examples=400)
@given(exits=exit_sequences)
def test_every_exit_sequence_ends_in_its_documented_way(exits):
    vcpu, result, _, _ = run_loop(exits)
    assert (result.status, result.reason) == expected_ending(exits)
    if result.status == STATUS_CRASH:
        assert result.message.startswith("vCPU 0: ")


@given(direction=st.sampled_from([0, 1]), size=st.sampled_from([1, 2, 4]),
       count=st.integers(1, 100), port=st.integers(0, 0xFFFC), data=st.binary(min_size=400,
                                                                                max_size=400))
def test_string_io_is_split_into_elements_in_order(direction, size, count, port, data):
    offset = 4096
    vcpu, result, accesses, _ = run_loop([("io", direction, size, port, count, offset, data)])
    assert result.reason == "halt"
    if direction == lib.KVM_EXIT_IO_OUT:
        assert accesses == [("write", port, data[i * size:(i + 1) * size]) for i in range(count)]
    else:
        assert accesses == [("read", port, size)] * count
        element = bytes(range(1, size + 1))
        assert bytes(vcpu.run_buffer[offset:offset + size * count]) == element * count
        # nothing after the data area was touched
        assert bytes(vcpu.run_buffer[offset + size * count:offset + 400]) == data[size * count:]


@given(addr=st.integers(0, 2**64 - 8), length=st.integers(1, 8), data=st.binary(min_size=8,
                                                                                  max_size=8))
def test_mmio_reads_fill_exactly_len_bytes_and_writes_carry_len_bytes(addr, length, data):
    vcpu, _, _, accesses = run_loop([("mmio", addr, length, 1, data), ("mmio", addr, length, 0, data)])
    assert accesses == [("write", addr, data[:length]), ("read", addr, length)]
    returned = bytes(vcpu.run_buffer[UNION + 8:UNION + 16])
    assert returned == bytes(range(1, length + 1)) + data[length:]


def test_counters_per_reason_and_port():
    exits = [("io", 1, 1, 0x3F8, 1, 4096, b"a"), ("io", 0, 1, 0x3FD, 1, 4096, b""), ("eintr",),
             ("mmio", 0xD0000000, 4, 1, bytes(8))]
    vcpu = FakeVcpu(exits)
    stats = ExitStats()
    VcpuLoop(vcpu, Bus.port_io(), Bus.mmio(), StopSignal(), stats).run()
    assert stats.by_reason() == {"io": 2, "mmio": 1, "hlt": 1}
    assert stats.by_port() == {(0x3F8, "out"): 1, (0x3FD, "in"): 1}
    assert stats.by_mmio() == {(0xD0000000, "write"): 1}
    assert stats.interrupted == 1
