"""The fast path without KVM: the UART state Python publishes, and the C exit
handler's checks on a fake `struct kvm_run`."""

import threading

import pytest
from hypothesis import given, settings, strategies as st

from pyvmm._kvm import ffi, lib
from pyvmm.devices import Bus
from pyvmm.devices.serial import Serial16550
from pyvmm.fastpath import THR_ZONE_REMOVALS, FastLoop, FastPath, Sink, UartShare, available, stop_flag
from pyvmm.stats import ExitStats
from pyvmm.stop import StopSignal

pytestmark = pytest.mark.skipif(not available(), reason="pyvmm._kvm was built without csrc/fastpath.c")

RUN_SIZE = 3 * 4096
HEADER = ffi.sizeof("struct kvm_run")
BASE = 0x3F8
SINK_BASE, SINK_LENGTH, SINK_FILL = 0x560, 4, 0xA5


def expected_state(serial):
    """What the C side may do, derived from the public register snapshot only."""
    regs = serial.register_snapshot()
    thr_plain = not (regs["LCR"] & 0x80 or regs["MCR"] & 0x10 or regs["IER"] & 0x02)
    return thr_plain, (-1 if regs["LSR"] & 0x1E else regs["LSR"])     # error bits clear on read


def published(share):
    return bool(share.uart.thr_plain), share.uart.lsr


def snapshot(serial):
    return serial.register_snapshot(), serial.bytes_transmitted, serial.bytes_received


# Operations a guest (register reads and writes) or the host (feed, reset) can do.
operations = st.lists(st.one_of(
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
@given(ops=operations)
def test_published_state_follows_every_register_change(ops):
    serial = Serial16550(output=lambda data: None)
    share = UartShare(serial)
    assert published(share) == expected_state(serial) == (True, 0x60)
    for operation in ops:
        apply(serial, operation)
        assert published(share) == expected_state(serial)


@settings(max_examples=200, deadline=None)
@given(ops=operations)
def test_what_c_answers_is_what_python_would_do(ops):
    """When the published state allows a fast LSR read or THR write, the Python
    model gives the same answer and ends in the same state as the C path + flush."""
    out_python, out_fast = [], []
    python = Serial16550(output=out_python.append)
    fast = Serial16550(output=out_fast.append)
    share = UartShare(fast)
    for operation in ops:
        apply(python, operation)
        apply(fast, operation)
        thr_plain, lsr = published(share)
        if lsr >= 0:
            before = snapshot(python)
            assert python.read(5, 1) == bytes((lsr,))
            assert snapshot(python) == before                  # no side effect: C may answer it
        if thr_plain:
            python.write(0, b"Z")
            state = fake_state(share)
            write_io(state, 1, 1, BASE, 1, HEADER, b"Z")
            assert _handle(state) == 1
            share.flush()
        assert snapshot(fast) == snapshot(python)
        assert b"".join(out_fast) == b"".join(out_python)
        assert fast.irq_level == python.irq_level


def test_flush_moves_bytes_in_order_and_counts_them():
    out = []
    serial = Serial16550(output=out.append)
    share = UartShare(serial)
    state = fake_state(share)
    for value in b"hello":
        write_io(state, 1, 1, BASE, 1, HEADER, bytes((value,)))
        assert _handle(state) == 1
    assert share.uart.len == 5 and serial.bytes_transmitted == 0
    share.flush()
    assert out == [b"hello"] and serial.bytes_transmitted == 5 and share.uart.len == 0
    assert state.thr_out == 5 and state.fast == 5 and state.exits[lib.KVM_EXIT_IO] == 5


def test_a_full_buffer_sends_the_write_to_python():
    serial = Serial16550(output=lambda data: None)
    share = UartShare(serial)
    state = fake_state(share)
    for _ in range(lib.PYVMM_FAST_TXBUF):
        write_io(state, 1, 1, BASE, 1, HEADER, b"x")
        assert _handle(state) == 1
    write_io(state, 1, 1, BASE, 1, HEADER, b"y")
    assert _handle(state) == 0
    assert share.uart.full == 1
    share.flush()
    assert serial.bytes_transmitted == lib.PYVMM_FAST_TXBUF
    assert _handle(state) == 1


def test_divisor_latch_and_loopback_and_thr_interrupt_are_not_simple():
    serial = Serial16550()
    share = UartShare(serial)
    for offset, value in ((3, 0x80), (4, 0x10), (1, 0x02)):
        serial.write(offset, bytes((value,)))
        assert published(share)[0] is False
        serial.write(offset, b"\x00")
        assert published(share)[0] is True


def test_input_from_another_thread_updates_the_lsr_answer():
    serial = Serial16550()
    share = UartShare(serial)
    assert published(share) == (True, 0x60)
    thread = threading.Thread(target=serial.feed, args=(b"k",))
    thread.start()
    thread.join()
    assert published(share) == (True, 0x61)          # data ready
    assert serial.read(0, 1) == b"k"
    assert published(share) == (True, 0x60)


def test_one_share_per_uart_and_close_detaches_it():
    serial = Serial16550()
    share = UartShare(serial)
    with pytest.raises(ValueError):
        UartShare(serial)
    share.close()
    assert serial.state_listener is None and published(share) == (False, -1)
    serial.write(3, b"\x80")                          # no longer heard
    assert published(share) == (False, -1)
    assert UartShare(serial).plain_output is False   # DLAB set


def test_the_plain_output_callback_hears_only_changes():
    heard = []
    serial = Serial16550()
    UartShare(serial, on_plain_output=heard.append)
    for offset, value in ((1, 0x02), (1, 0x03), (1, 0x00), (7, 0x55), (3, 0x80), (3, 0x03)):
        serial.write(offset, bytes((value,)))
    assert heard == [True, False, True, False, True]


def test_stop_flag_follows_the_stop_signal():
    stop = StopSignal()
    flag = stop_flag(stop)
    assert stop_flag(stop) is flag and flag[0] == 0
    stop.request(3, "test")
    assert flag[0] == 1 and stop.requested and stop.result.status == 3
    late = StopSignal()
    late.request(0, "halt")
    assert stop_flag(late)[0] == 1


# --- the C checks on a fake kvm_run ---------------------------------------------------

class FakeState:
    """A pyvmm_fast state over a bytearray standing in for the kvm_run mapping."""

    def __init__(self, share=None, sinks=()):
        self.buffer = bytearray(RUN_SIZE)
        self.run = ffi.from_buffer("struct kvm_run *", self.buffer)
        self.state = ffi.new("struct pyvmm_fast *")
        self.state.vcpu_fd = -1
        self.state.run = self.run
        self.state.run_size = RUN_SIZE
        if share is not None:
            self.state.uart = share.uart
            self.state.uart_base = BASE
        for index, (base, length, fill) in enumerate(sinks):
            self.state.sinks[index].base = base
            self.state.sinks[index].length = length
            self.state.sinks[index].fill = fill
        self.state.nsinks = len(sinks)

    def __getattr__(self, name):
        return getattr(self.state, name)


def fake_state(share=None, sinks=()):
    return FakeState(share, sinks)


def write_io(fake, direction, size, port, count, offset, data=b""):
    run = fake.run
    run.exit_reason = lib.KVM_EXIT_IO
    run.io.direction, run.io.size, run.io.port = direction, size, port
    run.io.count, run.io.data_offset = count, offset
    if HEADER <= offset < RUN_SIZE:
        end = min(RUN_SIZE, offset + len(data))
        fake.buffer[offset:end] = data[:end - offset]


def _handle(fake):
    return lib.pyvmm_fast_handle_exit(fake.state)


@settings(max_examples=500, deadline=None)
@given(direction=st.integers(0, 1), size=st.sampled_from([0, 1, 2, 3, 4, 8, 255]),
       port=st.one_of(st.sampled_from([BASE, BASE + 5, BASE + 1, SINK_BASE, SINK_BASE + 3,
                                       SINK_BASE + 2, SINK_BASE - 1, SINK_BASE + 4]),
                      st.integers(0, 0xFFFF)),
       count=st.sampled_from([0, 1, 2, 0xFFFFFFFF]),
       offset=st.one_of(st.integers(HEADER, RUN_SIZE + 8), st.sampled_from([RUN_SIZE - 1, RUN_SIZE - 4,
                                                                            2**63, 2**64 - 1])),
       thr_plain=st.booleans(), lsr=st.sampled_from([0x60, -1]))
def test_c_handles_exactly_the_valid_fast_exits_and_writes_nothing_else(
        direction, size, port, count, offset, thr_plain, lsr):
    serial = Serial16550()
    share = UartShare(serial)
    lib.pyvmm_fast_uart_publish(share.uart, thr_plain, lsr)
    fake = fake_state(share, sinks=[(SINK_BASE, SINK_LENGTH, SINK_FILL)])
    write_io(fake, direction, size, port, count, offset, b"\x42" * 8)
    before = bytes(fake.buffer)
    handled = _handle(fake)

    valid = count == 1 and size in (1, 2, 4) and offset + size <= RUN_SIZE
    out = direction == 1
    thr = valid and out and size == 1 and port == BASE and thr_plain
    lsr_read = valid and not out and size == 1 and port == BASE + 5 and lsr == 0x60
    sink = valid and SINK_BASE <= port and port + size <= SINK_BASE + SINK_LENGTH
    assert handled == int(thr or lsr_read or sink)
    changed = [i for i in range(RUN_SIZE) if fake.buffer[i] != before[i]]
    if lsr_read:
        assert changed in ([], [offset]) and fake.buffer[offset] == 0x60
    elif sink and not out:
        assert all(offset <= i < offset + size for i in changed)
        assert fake.buffer[offset:offset + size] == bytes((SINK_FILL,)) * size
    else:
        assert changed == []
    assert share.uart.len == int(thr)
    assert fake.state.exits[lib.KVM_EXIT_IO] == 1 and fake.state.fast == handled
    if sink:
        assert fake.state.sink_counts[0][port - SINK_BASE][direction] == 1


def test_other_exit_reasons_go_to_python_and_are_counted():
    fake = fake_state()
    for reason in (lib.KVM_EXIT_HLT, lib.KVM_EXIT_MMIO, lib.KVM_EXIT_SHUTDOWN, 200):
        fake.run.exit_reason = reason
        assert _handle(fake) == 0
    assert fake.state.exits[lib.KVM_EXIT_HLT] == 1 and fake.state.exits_other == 1
    assert fake.state.fast == 0


def test_sink_device_answers_like_the_c_path():
    sink = Sink(fill=0x1FF)
    assert sink.fill == 0xFF
    assert sink.read(0, 4) == b"\xff" * 4
    assert sink.write(0, b"\x00") is None


def test_fast_loop_merges_the_c_counters_into_exit_stats():
    class NoVcpu:
        index, fd, run_size = 0, -1, RUN_SIZE

        def __init__(self):
            self.buffer = bytearray(RUN_SIZE)
            self.run = ffi.from_buffer("struct kvm_run *", self.buffer)
            self.run_buffer = memoryview(self.buffer)

    from pyvmm.devices import Bus
    bus = Bus.port_io()
    serial = Serial16550()
    bus.register(BASE, 8, serial)
    bus.register(SINK_BASE, 2, Sink())
    stats = ExitStats()
    loop = FastLoop(NoVcpu(), bus, Bus.mmio(), StopSignal(), stats)
    assert loop.uart_base == BASE and loop.sinks == [(SINK_BASE, 2)]
    state = loop.state
    state.exits[lib.KVM_EXIT_IO] = 7
    state.exits[lib.KVM_EXIT_HLT] = 1
    state.fast, state.thr_out, state.lsr_in = 6, 2, 3
    state.sink_counts[0][1][1] = 1
    loop._collect()
    assert stats.by_reason() == {"io": 7, "hlt": 1}
    assert stats.by_port() == {(BASE, "out"): 2, (BASE + 5, "in"): 3, (SINK_BASE + 1, "out"): 1}
    loop._collect()                                  # counters were reset: nothing counted twice
    assert stats.total == 8


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


def fast_path_with_uart():
    from pyvmm.devices import Bus, DebugConsole
    port_bus = Bus.port_io()
    serial = Serial16550()
    port_bus.register(BASE, 8, serial)
    port_bus.register(0xE9, 1, DebugConsole(lambda data: None))
    vm = ZoneRecorder()
    return FastPath(port_bus, Bus.mmio(), vm), serial, vm


def test_posted_write_zones_are_registered_and_the_thr_zone_waits_for_volume():
    fast, serial, vm = fast_path_with_uart()
    assert vm.zones == {(0xE9, 1, True)}
    fast.coalesce_busy_uart()
    assert (BASE, 1, True) in vm.zones
    fast.close()
    assert vm.zones == set()


def test_the_thr_zone_follows_plain_output_and_stops_after_its_removal_budget():
    fast, serial, vm = fast_path_with_uart()
    thr = (BASE, 1, True)
    for removal in range(THR_ZONE_REMOVALS + 3):
        fast.coalesce_busy_uart()
        registered = thr in vm.zones
        assert registered == (removal < THR_ZONE_REMOVALS)
        serial.write(1, b"\x02")                  # THR-empty interrupt on: no longer plain
        assert thr not in vm.zones
        fast.coalesce_busy_uart()                  # not while the interrupt is on
        assert thr not in vm.zones
        serial.write(1, b"\x00")
    assert vm.removals == THR_ZONE_REMOVALS
    fast.close(vm_ending=True)
    assert vm.zones == {(0xE9, 1, True)}          # left to the VM's teardown


# --- the coalesced ring, filled by hand -------------------------------------------------

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
    from pyvmm.devices import Bus, Cmos, DebugConsole, PostCode
    bus = Bus.port_io()
    serial = Serial16550(output=output.append)
    bus.register(BASE, 8, serial)
    bus.register(0xE9, 1, DebugConsole(output.append))
    post = PostCode(now=lambda: 0)
    bus.register(0x80, 1, post)
    cmos = Cmos(128 << 20)
    bus.register(0x70, 2, cmos)
    return bus, serial, post, cmos


def observed(output, serial, post, cmos):
    return (b"".join(output), serial.bytes_transmitted, serial.irq_level, serial.register_snapshot(),
            [value for _, value in post.history()], cmos.read(1, 1))


ring_operations = st.lists(st.one_of(
    st.tuples(st.just("write"), st.sampled_from([BASE, 0xE9, 0x80, 0x70]), st.integers(0, 255)),
    st.tuples(st.just("exit"), st.sampled_from([(1, 0x00), (1, 0x02), (3, 0x80), (3, 0x03), (4, 0x10),
                                                 (4, 0x00)])),
    st.tuples(st.just("drain")),
    st.tuples(st.just("busy")),
), max_size=400)


@settings(max_examples=150, deadline=None)
@given(ops=ring_operations)
def test_ring_writes_reach_devices_as_direct_writes_would(ops):
    """Writes through the ring (C takes THR bytes while plain output, Python the
    rest), drained at exits and flushes, end exactly as the same writes made
    directly in order: one output stream shared by the UART and debugcon,
    UART registers and interrupt line, POST history, CMOS index."""
    reference_out, ring_out = [], []
    reference_bus, *reference = platform(reference_out)
    bus, serial, post, cmos = platform(ring_out)
    vm = ZoneRecorder()
    fast = FastPath(bus, Bus.mmio(), vm)
    fast.attach(ffi.new("struct pyvmm_fast *"))
    ring = ring_of(vm)
    pushed = 0
    for op in ops:
        if op[0] == "write":
            _, port, value = op
            reference_bus.write(port, bytes((value,)))
            if (port, 1, True) in vm.zones and push(ring, port, bytes((value,))):
                pushed += 1
            else:
                fast.flush()                        # an exit: the ring is drained first
                bus.write(port, bytes((value,)))
        elif op[0] == "exit":                       # a UART register write, handled after a drain
            _, (offset, value) = op
            reference_bus.write(BASE + offset, bytes((value,)))
            fast.flush()
            bus.write(BASE + offset, bytes((value,)))
        elif op[0] == "drain":
            fast.flush()
        else:
            fast.coalesce_busy_uart()
    fast.close()
    assert observed(ring_out, serial, post, cmos) == observed(reference_out, *reference)
    assert fast.stats.coalesced == pushed and ring.first == ring.last


def test_ring_indices_out_of_range_are_dropped_not_followed():
    output = []
    bus, serial, post, cmos = platform(output)
    vm = ZoneRecorder()
    fast = FastPath(bus, Bus.mmio(), vm)
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


def test_concurrent_flushes_keep_every_byte_once_and_in_order():
    """The supervisor's periodic flush and the vCPUs' flushes race: each byte C
    buffered must reach the UART exactly once, in the order it was written."""
    out = []
    serial = Serial16550(output=out.append)
    share = UartShare(serial)
    producer = fake_state(share)
    total = 200_000
    expected = bytes(i % 251 for i in range(total))
    stop = threading.Event()

    def flusher():
        while not stop.is_set():
            share.flush()

    flushers = [threading.Thread(target=flusher) for _ in range(3)]
    for thread in flushers:
        thread.start()
    try:
        for value in expected:
            write_io(producer, 1, 1, BASE, 1, HEADER, BYTE[value])
            while not _handle(producer):        # buffer full: let the flushers catch up
                pass
    finally:
        stop.set()
        for thread in flushers:
            thread.join()
    share.flush()
    assert b"".join(out) == expected


BYTE = [bytes((value,)) for value in range(256)]
