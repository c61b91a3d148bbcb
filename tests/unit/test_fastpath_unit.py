"""The fast path without KVM: the register table compiled from the devices'
declarations, the C exit handler's checks on a fake `struct kvm_run`, the
deferred-write queue (fed by C, by a hand-filled coalesced ring and by
concurrent producers), and the coalesced zones."""

import sys
import threading

import pytest
from hypothesis import given, settings, strategies as st

from pyvmm._kvm import ffi, lib
from pyvmm.devices import Bus, Cmos, DebugConsole, PostCode
from pyvmm.devices.bus import ONE_BYTE
from pyvmm.devices.context import DeviceContext
from pyvmm.devices.serial import Serial16550
from pyvmm.run.fast import POSTED_VOLUME, ZONE_REMOVALS, FastLoop, FastPath, stop_flag
from pyvmm.run.stats import ExitStats
from pyvmm.run.stop import StopSignal

RUN_SIZE = 3 * 4096
HEADER = ffi.sizeof("struct kvm_run")
UNION = ffi.offsetof("struct kvm_run", "io")
BASE = 0x3F8
LSR, SCR = BASE + 5, BASE + 7


def attached(bus, base, device):
    """Registers `device` and hands it a context with its range's published state."""
    bus.register(base, 8 if isinstance(device, Serial16550) else 1, device)
    device.attach(DeviceContext("test", None, registers=bus.delivery_at(base).registers))
    return device


class Probe:
    """A device with declared registers that records what reaches it."""

    def __init__(self, posted=(), cached=(), answer=0x5A):
        self.posted_writes, self.cached_reads, self.answer = posted, cached, answer
        self.log = []

    def read(self, offset, size):
        self.log.append(("read", offset, size))
        return bytes((self.answer,)) * size

    def write(self, offset, data):
        self.log.append(("write", offset, bytes(data)))


class FakeState:
    """A vCPU's C state over a bytearray standing in for the kvm_run mapping."""

    def __init__(self, fast):
        self.buffer = bytearray(RUN_SIZE)
        self.run = ffi.from_buffer("struct kvm_run *", self.buffer)
        self.state = ffi.new("struct pyvmm_fast *")
        self.state.vcpu_fd = -1
        self.state.run = self.run
        self.state.run_size = RUN_SIZE
        fast.attach(self.state)

    def io(self, direction, size, port, count=1, offset=HEADER, data=b""):
        """Puts a port-I/O exit in kvm_run and lets C handle it: 1 handled, 0 not."""
        self.put_io(direction, size, port, count, offset, data)
        return self.handle()

    def handle(self):
        return lib.pyvmm_fast_handle_exit(self.state)

    def put_io(self, direction, size, port, count=1, offset=HEADER, data=b""):
        run = self.run
        run.exit_reason = lib.KVM_EXIT_IO
        run.io.direction, run.io.size, run.io.port = direction, size, port
        run.io.count, run.io.data_offset = count, offset
        if HEADER <= offset < RUN_SIZE:
            end = min(RUN_SIZE, offset + len(data))
            self.buffer[offset:end] = data[:end - offset]

    def mmio(self, address, length, is_write, data=bytes(8)):
        run = self.run
        run.exit_reason = lib.KVM_EXIT_MMIO
        run.mmio.phys_addr, run.mmio.len, run.mmio.is_write = address, length, is_write
        ffi.memmove(run.mmio.data, data, 8)
        return lib.pyvmm_fast_handle_exit(self.state)


# --- what C may handle ------------------------------------------------------------------

@settings(max_examples=500, deadline=None)
@given(direction=st.integers(0, 1), size=st.sampled_from([0, 1, 2, 3, 4, 8, 255]),
       port=st.one_of(st.sampled_from([0x500, 0x503, 0x504, 0x507, 0x508, 0x4FF, 0x506]),
                      st.integers(0, 0xFFFF)),
       count=st.sampled_from([0, 1, 2, 0xFFFFFFFF]),
       offset=st.one_of(st.integers(HEADER, RUN_SIZE + 8),
                        st.sampled_from([RUN_SIZE - 1, RUN_SIZE - 4, 2**63, 2**64 - 1])),
       posting=st.booleans(), cached=st.sampled_from([None, 0x60, 0xABCD]))
def test_c_handles_exactly_the_declared_port_accesses_and_writes_nothing_else(
        direction, size, port, count, offset, posting, cached):
    # posted: ports 0x500-0x503 (any size inside); cached: a 2-byte read at 0x506
    bus = Bus.port_io()
    bus.register(0x500, 8, Probe(posted=((0, 4),), cached=((6, 2),)))
    registers = bus.delivery_at(0x500).registers
    registers.allow_posted(0, posting)
    registers.publish(6, cached)
    fast = FastPath(bus, Bus.mmio())
    fake = FakeState(fast)
    fake.put_io(direction, size, port, count, offset, b"\x42" * 8)
    before = bytes(fake.buffer)
    handled = fake.handle()

    valid = count == 1 and size in (1, 2, 4) and offset + size <= RUN_SIZE
    posted = valid and direction == 1 and posting and 0x500 <= port and port + size <= 0x504
    answered = valid and direction == 0 and cached is not None and port == 0x506 and size == 2
    assert handled == int(posted or answered)
    changed = [i for i in range(RUN_SIZE) if fake.buffer[i] != before[i]]
    if answered:
        assert fake.buffer[offset:offset + 2] == (cached & 0xFFFF).to_bytes(2, "little")
        assert all(offset <= i < offset + 2 for i in changed)
    else:
        assert changed == []
    assert fast.deferred.log.count == int(posted)
    assert fake.state.fast == handled and fake.state.exits[lib.KVM_EXIT_IO] == handled
    fast.close()
    assert bus.device_at(0x500).log == ([("write", port - 0x500, b"\x42" * size)] if posted else [])


@settings(max_examples=300, deadline=None)
@given(address=st.one_of(st.integers(0xD0000000 - 8, 0xD0000020), st.integers(0, 2**64 - 1)),
       length=st.integers(0, 12), is_write=st.booleans(), data=st.binary(min_size=8, max_size=8))
def test_c_handles_exactly_the_declared_mmio_accesses(address, length, is_write, data):
    bus = Bus.mmio()
    bus.register(0xD0000000, 0x20, Probe(posted=((0, 0x10),), cached=((0x10, 8),)))
    bus.delivery_at(0xD0000000).registers.publish(0x10, 0x1122334455667788)
    fast = FastPath(Bus.port_io(), bus)
    fake = FakeState(fast)
    handled = fake.mmio(address, length, is_write, data)
    posted = is_write and 1 <= length <= 8 and 0xD0000000 <= address and address + length <= 0xD0000010
    answered = not is_write and length == 8 and address == 0xD0000010
    assert handled == int(posted or answered)
    if answered:
        assert bytes(ffi.buffer(fake.run.mmio.data, 8)) == (0x1122334455667788).to_bytes(8, "little")
    fast.close()
    assert bus.device_at(0xD0000000).log == ([("write", address - 0xD0000000, data[:length])] if posted
                                             else [])


def test_other_exit_reasons_go_to_python_uncounted():
    fast = FastPath(Bus.port_io(), Bus.mmio())
    fake = FakeState(fast)
    for reason in (lib.KVM_EXIT_HLT, lib.KVM_EXIT_SHUTDOWN, 200):
        fake.run.exit_reason = reason
        assert lib.pyvmm_fast_handle_exit(fake.state) == 0
    assert fake.state.fast == 0 and sum(fake.state.exits) == 0


def test_a_full_queue_sends_the_write_to_python_and_a_drain_makes_room():
    bus = Bus.port_io()
    probe = Probe(posted=((0, 1),))
    bus.register(0x500, 1, probe)
    fast = FastPath(bus, Bus.mmio())
    fake = FakeState(fast)
    for value in range(lib.PYVMM_FAST_LOG):
        assert fake.io(1, 1, 0x500, data=ONE_BYTE[value & 0xFF]) == 1
    assert fake.io(1, 1, 0x500, data=b"x") == 0
    fast.flush()
    assert [entry[2][0] for entry in probe.log] == [value & 0xFF for value in range(lib.PYVMM_FAST_LOG)]
    assert fake.io(1, 1, 0x500, data=b"y") == 1
    fast.close()
    assert probe.log[-1] == ("write", 0, b"y")


def test_more_registers_than_the_table_holds_stay_with_python():
    bus = Bus.port_io()
    probes = [Probe(cached=((0, 1),)) for _ in range(lib.PYVMM_FAST_REGS + 3)]
    for index, probe in enumerate(probes):
        bus.register(0x1000 + index, 1, probe)
        bus.delivery_at(0x1000 + index).registers.publish(0, 7)
    fast = FastPath(bus, Bus.mmio())
    fake = FakeState(fast)
    assert fake.io(0, 1, 0x1000) == 1
    assert fake.io(0, 1, 0x1000 + lib.PYVMM_FAST_REGS) == 0
    fast.close()


def test_a_value_published_while_the_table_is_built_is_not_lost():
    """Host input changes the UART's LSR from the input thread at any time, the
    start of a run included: the table must end with the device's last word."""
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)                     # switch threads as often as possible
    try:
        for _ in range(200):
            bus = Bus.port_io()
            bus.register(0x500, 1, Probe(cached=((0, 1),)))
            state = bus.delivery_at(0x500).registers
            done = threading.Event()

            def publish():
                value = 0
                while not done.is_set():
                    value = (value + 1) % 256
                    state.publish(0, value)

            publisher = threading.Thread(target=publish)
            publisher.start()
            fast = FastPath(bus, Bus.mmio())
            done.set()
            publisher.join()
            fake = FakeState(fast)
            last = state.values[0]                  # None if the publisher never got to run
            assert fake.io(0, 1, 0x500) == (last is not None)
            assert last is None or fake.buffer[HEADER] == last
            fast.close()
    finally:
        sys.setswitchinterval(interval)


# --- the UART publishes what C may do -------------------------------------------------------

def expected_state(serial):
    """What the C side may do, derived from the public register snapshot only."""
    regs = serial.register_snapshot()
    thr_plain = not (regs["LCR"] & 0x80 or regs["MCR"] & 0x10 or regs["IER"] & 0x02)
    return thr_plain, (None if regs["LSR"] & 0x1E else regs["LSR"])     # error bits clear on read


uart_operations = st.lists(st.one_of(
    st.tuples(st.just("write"), st.integers(0, 7), st.integers(0, 255)),
    st.tuples(st.just("read"), st.integers(0, 7)),
    st.tuples(st.just("feed"), st.binary(min_size=1, max_size=20)),
    st.tuples(st.just("reset")),
), max_size=40)


def apply(serial, operation):
    kind = operation[0]
    if kind == "write":
        serial.write(operation[1], bytes((operation[2],)))
    elif kind == "read":
        serial.read(operation[1], 1)
    elif kind == "feed":
        serial.feed(operation[1])
    else:
        serial.reset()


@settings(max_examples=200, deadline=None)
@given(ops=uart_operations)
def test_the_uart_publishes_every_change_of_what_may_be_posted_or_cached(ops):
    bus = Bus.port_io()
    serial = attached(bus, BASE, Serial16550())
    state = bus.delivery_at(BASE).registers
    for operation in [("read", 0)] + ops:
        apply(serial, operation)
        assert (state.posting[0], state.values[5]) == expected_state(serial)
        assert state.posting[7] is True                     # the scratch register always posts


@settings(max_examples=200, deadline=None)
@given(ops=uart_operations)
def test_what_c_answers_is_what_the_python_model_would(ops):
    """Whenever the table lets C take a THR write or answer LSR, the UART ends
    exactly as if the Python model had been called, once the queue is delivered."""
    out_python, out_fast = [], []
    python = Serial16550(output=out_python.append)
    bus = Bus.port_io()
    fast_uart = attached(bus, BASE, Serial16550(output=out_fast.append))
    fast = FastPath(bus, Bus.mmio())
    fake = FakeState(fast)
    for operation in ops:
        if operation[0] == "write" and operation[1] in (0, 7):
            python.write(operation[1], bytes((operation[2],)))
            if not fake.io(1, 1, BASE + operation[1], data=ONE_BYTE[operation[2]]):
                bus.write(BASE + operation[1], ONE_BYTE[operation[2]])
        elif operation[0] == "read" and operation[1] == 5:
            expected = python.read(5, 1)
            if fake.io(0, 1, LSR):
                assert bytes(fake.buffer[HEADER:HEADER + 1]) == expected
                fast_uart.read(5, 1)        # no side effect: keeps the two in step
            else:
                assert bus.read(LSR, 1) == expected
        else:
            apply(python, operation)
            fast.flush()
            apply(fast_uart, operation)
    fast.close()
    assert b"".join(out_fast) == b"".join(out_python)
    assert fast_uart.register_snapshot() == python.register_snapshot()
    assert fast_uart.bytes_transmitted == python.bytes_transmitted
    assert fast_uart.irq_level == python.irq_level


# --- the queue: ring, producers, order ---------------------------------------------------

class ZoneRecorder:
    """A Vm stand-in for FastPath: a ring page in host memory, zone calls logged."""

    class Kvm:
        @staticmethod
        def check_extension(capability):
            return 1

    fd = 3

    def __init__(self):
        self.kvm = self.Kvm()
        self.page = ffi.new("char[]", 4096)
        self.zones = set()
        self.removals = 0

    def coalesced_ring(self):
        return self.page, 4096

    def register_coalesced(self, addr, size, pio=False):
        self.zones.add((addr, size, pio))

    def unregister_coalesced(self, addr, size, pio=False):
        self.zones.remove((addr, size, pio))
        self.removals += 1


RING_HEADER = ffi.sizeof("struct kvm_coalesced_mmio_ring")
RING_ENTRY = ffi.sizeof("struct kvm_coalesced_mmio")
RING_SLOTS = (4096 - RING_HEADER) // RING_ENTRY


def ring_of(vm):
    return ffi.cast("struct kvm_coalesced_mmio_ring *", vm.page)


def push(ring, address, data, pio=1):
    """What KVM does for a write in a zone; False when the ring is full (KVM would exit)."""
    last = ring.last
    if (last + 1) % RING_SLOTS == ring.first:
        return False
    entry = ring.coalesced_mmio[last]
    entry.phys_addr, entry.len, entry.pio = address, len(data), pio
    ffi.memmove(entry.data, data, len(data))
    ring.last = (last + 1) % RING_SLOTS
    return True


def platform(output):
    """The UART, debugcon, POST and CMOS on a port bus, all printing to `output`."""
    bus = Bus.port_io()
    serial = attached(bus, BASE, Serial16550(output=output.append))
    bus.register(0xE9, 1, DebugConsole(output.append))
    post = PostCode(now=lambda: 0)
    bus.register(0x80, 1, post)
    cmos = Cmos(128 << 20)
    bus.register(0x70, 2, cmos)
    return bus, serial, post, cmos


def zoned_platform(output):
    """platform(output) under a FastPath with a ring: (bus, serial, vm, fast)."""
    bus, serial, _post, _cmos = platform(output)
    vm = ZoneRecorder()
    return bus, serial, vm, FastPath(bus, Bus.mmio(), vm)


def observed(output, serial, post, cmos):
    return (b"".join(output), serial.bytes_transmitted, serial.irq_level, serial.register_snapshot(),
            [value for _, value in post.history()], cmos.read(1, 1))


queue_operations = st.lists(st.one_of(
    st.tuples(st.just("write"), st.sampled_from([BASE, SCR, 0xE9, 0x80, 0x70]), st.integers(0, 255)),
    st.tuples(st.just("register"), st.sampled_from([(1, 0x00), (1, 0x02), (3, 0x80), (3, 0x03), (4, 0x10),
                                                     (4, 0x00), (7, None)])),
    st.tuples(st.just("flush")),
    st.tuples(st.just("busy")),
), max_size=300)


@settings(max_examples=150, deadline=None)
@given(ops=queue_operations)
def test_deferred_writes_reach_devices_as_direct_writes_would(ops):
    """Writes that KVM's ring queued (where a zone is registered), writes C
    took on exits, and everything else through the bus (which delivers the
    queue first) end exactly as the same writes made directly in order: one
    output stream shared by the UART and debugcon, UART registers and
    interrupt line, POST history, CMOS index, the scratch register."""
    reference_out, queued_out = [], []
    reference_bus, *reference = platform(reference_out)
    bus, serial, post, cmos = platform(queued_out)
    vm = ZoneRecorder()
    fast = FastPath(bus, Bus.mmio(), vm)
    fake = FakeState(fast)
    ring = ring_of(vm)
    pushed = 0
    for op in ops:
        if op[0] == "write":
            _, port, value = op
            reference_bus.write(port, ONE_BYTE[value])
            if (port, 1, True) in vm.zones and push(ring, port, ONE_BYTE[value]):
                pushed += 1
            elif not fake.io(1, 1, port, data=ONE_BYTE[value]):
                bus.write(port, ONE_BYTE[value])
        elif op[0] == "register":                   # a UART register access through the bus
            _, (offset, value) = op
            if value is None:
                assert bus.read(BASE + offset, 1) == reference_bus.read(BASE + offset, 1)
            else:
                reference_bus.write(BASE + offset, ONE_BYTE[value])
                bus.write(BASE + offset, ONE_BYTE[value])
        elif op[0] == "flush":
            fast.flush()
        else:
            fast.coalesce_busy_ranges()
    fast.close()
    assert observed(queued_out, serial, post, cmos) == observed(reference_out, *reference)
    assert fast.deferred.stats.coalesced == pushed and ring.first == ring.last


def test_posted_ranges_get_a_zone_after_volume_and_lose_it_when_posting_stops():
    output = []
    bus, serial, vm, fast = zoned_platform(output)
    fake = FakeState(fast)
    thr = (BASE, 1, True)
    for removal in range(ZONE_REMOVALS + 3):
        for _ in range(POSTED_VOLUME):
            assert fake.io(1, 1, BASE, data=b"x") == 1
        fast.coalesce_busy_ranges()
        assert (thr in vm.zones) == (removal < ZONE_REMOVALS)
        bus.write(BASE + 1, b"\x02")                # THR-empty interrupt on: no longer plain
        assert thr not in vm.zones
        for _ in range(POSTED_VOLUME):
            assert fake.io(1, 1, BASE, data=b"x") == 0
        fast.coalesce_busy_ranges()                 # not while the interrupt is on
        assert thr not in vm.zones
        bus.write(BASE + 1, b"\x00")
    assert vm.removals == ZONE_REMOVALS
    assert (0xE9, 1, True) not in vm.zones          # a quiet range never gets one
    fast.close(vm_ending=True)
    # the writes C took were delivered, as plain output, before each IER write
    assert b"".join(output) == b"x" * (POSTED_VOLUME * (ZONE_REMOVALS + 3))
    assert serial.bytes_transmitted == POSTED_VOLUME * (ZONE_REMOVALS + 3)


def test_ring_indices_out_of_range_are_dropped_not_followed():
    output = []
    bus, serial, vm, fast = zoned_platform(output)
    ring = ring_of(vm)
    push(ring, 0xE9, b"a")
    ring.last = RING_SLOTS + 5                     # a ring page nobody should trust
    fast.flush()
    assert output == [] and ring.first == 0 and ring.last == RING_SLOTS + 5
    ring.last, ring.first = 1, 0
    long_entry = ring.coalesced_mmio[0]
    long_entry.len = 200                           # clipped to the 8 data bytes
    fast.flush()
    assert output == [] and bus.unhandled_writes == 1   # an 8-byte write: wider than debugcon
    assert ring.first == ring.last == 1
    fast.close()


def test_concurrent_producers_and_drainers_keep_every_write_once_and_in_order():
    """vCPUs take posted writes in C while the supervisor and other vCPUs
    deliver the queue: each producer's bytes must reach the UART exactly
    once, in the order it wrote them."""
    out = []
    bus = Bus.port_io()
    attached(bus, BASE, Serial16550(output=out.append))
    fast = FastPath(bus, Bus.mmio())
    producers = 2
    total = 60_000
    stop = threading.Event()

    def drainer():
        while not stop.is_set():
            fast.flush()

    def producer(tag):
        fake = FakeState(fast)
        for i in range(total):
            while not fake.io(1, 1, BASE, data=ONE_BYTE[0x80 | tag << 5 | i & 31]):
                pass                                # queue full: the drainers catch up

    drainers = [threading.Thread(target=drainer) for _ in range(3)]
    writers = [threading.Thread(target=producer, args=(tag,)) for tag in range(producers)]
    for thread in drainers + writers:
        thread.start()
    for thread in writers:
        thread.join()
    stop.set()
    for thread in drainers:
        thread.join()
    fast.close()
    output = b"".join(out)
    assert len(output) == producers * total
    for tag in range(producers):
        stream = bytes(byte for byte in output if byte & 0xE0 == 0x80 | tag << 5)
        assert stream == bytes(0x80 | tag << 5 | i & 31 for i in range(total)), f"producer {tag}"


# --- the loop's side ---------------------------------------------------------------------------

def test_fast_loop_merges_the_c_counters_and_delivers_at_each_return():
    class NoVcpu:
        index, fd, run_size = 0, -1, RUN_SIZE

        def __init__(self):
            self.buffer = bytearray(RUN_SIZE)
            self.run_pointer = ffi.from_buffer("struct kvm_run *", self.buffer)
            self.run_buffer = memoryview(self.buffer)
            self.enter = None
            self.exits = None

    bus = Bus.port_io()
    probe = Probe(posted=((0, 1),))
    bus.register(0x500, 1, probe)
    fast = FastPath(bus, Bus.mmio())
    stats = ExitStats()
    loop = FastLoop(NoVcpu(), bus, Bus.mmio(), StopSignal(), stats, fast)
    state = loop.state
    fake = FakeState(fast)
    assert fake.io(1, 1, 0x500, data=b"a") == 1
    state.exits[lib.KVM_EXIT_IO] = 7
    state.fast = 7
    loop._collect()
    assert stats.by_reason() == {"io": 7}
    assert probe.log == [("write", 0, b"a")]
    loop._collect()                                  # counters were reset: nothing counted twice
    assert stats.total == 7
    fast.close()
    assert fast.counts().by_port() == {(0x500, "out"): 1}


def test_stop_flag_follows_the_stop_signal():
    stop = StopSignal()
    flag = stop_flag(stop)
    assert flag[0] == 0 and stop_flag(stop) is flag
    stop.request(0, "halt")
    assert flag[0] == 1
    late = StopSignal()
    late.request(0, "halt")
    assert stop_flag(late)[0] == 1
