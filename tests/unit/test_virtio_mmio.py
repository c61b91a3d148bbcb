"""The virtio-mmio version 2 transport: registers, status machine, queues, interrupts, reset."""

import pytest

from pyvmm.devices.virtio import spec
from pyvmm.devices.virtio.device import VirtioDevice
from pyvmm.devices.virtio.mmio import COMMON_FEATURES, VENDOR_ID, EmptySlot, MmioTransport
from pyvmm.testing.virtio import VirtioBench

ACK, DRV, FOK, DOK, NEEDS_RESET = (spec.ACKNOWLEDGE, spec.DRIVER, spec.FEATURES_OK, spec.DRIVER_OK,
                                   spec.DEVICE_NEEDS_RESET)


class Echo(VirtioDevice):
    """Copies each request's readable bytes into its writable ones; two queues."""

    device_id = 0x55
    queue_count = 2
    features = 1 << 3

    def __init__(self):
        super().__init__()
        self.handled = []
        self.resets = 0
        self.config_writes = []

    def handle(self, queue_index, chain):
        self.handled.append((queue_index, chain.head))
        return chain.write(chain.read())

    def config(self):
        return bytes(range(1, 11))

    def write_config(self, offset, data):
        self.config_writes.append((offset, data))

    def reset(self):
        self.resets += 1


@pytest.fixture
def bench():
    with VirtioBench(Echo()) as bench:
        yield bench


def reg(bench, offset):
    return bench.driver.read(offset)


def test_identification(bench):
    assert reg(bench, spec.MMIO_MAGIC_VALUE) == 0x74726976
    assert reg(bench, spec.MMIO_VERSION) == 2
    assert reg(bench, spec.MMIO_DEVICE_ID) == 0x55
    assert reg(bench, spec.MMIO_VENDOR_ID) == VENDOR_ID
    assert bench.driver.device_features() == COMMON_FEATURES | 1 << 3
    bench.driver.write(spec.MMIO_DEVICE_FEATURES_SEL, 2)
    assert reg(bench, spec.MMIO_DEVICE_FEATURES) == 0
    assert bench.transport.doorbells == ((0x50, 4, 0), (0x50, 4, 1))


def test_register_access_sizes(bench):
    transport = bench.transport
    assert transport.read(0, 8) == (0x74726976).to_bytes(4, "little") + (2).to_bytes(4, "little")
    assert transport.read(0, 1) == b"\0" and transport.read(0, 2) == b"\0\0"   # registers are 32-bit
    assert transport.read(2, 4) == bytes(4)                                    # no register there
    transport.write(spec.MMIO_STATUS, bytes([ACK]))                            # a 1-byte write: ignored
    assert reg(bench, spec.MMIO_STATUS) == 0
    transport.write(spec.MMIO_QUEUE_DESC_LOW, (0x1234_5678_9ABC_DEF0).to_bytes(8, "little"))
    assert transport.queues[0].desc == 0x1234_5678_9ABC_DEF0                   # as two 4-byte writes
    assert reg(bench, spec.MMIO_QUEUE_DESC_LOW) == 0                           # write-only: reads 0


def test_config_space_reads_and_writes(bench):
    transport = bench.transport
    assert transport.read(0x100, 1) == b"\x01"
    assert transport.read(0x102, 4) == bytes([3, 4, 5, 6])
    assert transport.read(0x100, 8) == bytes(range(1, 9))
    assert transport.read(0x108, 4) == b"\xff" * 4          # straddles the end: all-ones
    assert transport.read(0x109, 1) == b"\x0a"
    assert transport.read(0x10A, 2) == b"\xff\xff"
    assert transport.read(0x1FC, 4) == b"\xff" * 4
    transport.write(0x104, b"\x99")
    assert bench.device.config_writes == [(4, b"\x99")]
    assert reg(bench, spec.MMIO_CONFIG_GENERATION) == 0


def test_shared_memory_regions_do_not_exist(bench):
    for offset in (spec.MMIO_SHM_LEN_LOW, spec.MMIO_SHM_LEN_HIGH, spec.MMIO_SHM_BASE_LOW,
                   spec.MMIO_SHM_BASE_HIGH):
        assert reg(bench, offset) == 0xFFFFFFFF


def test_negotiation_accepts_a_subset_with_version_1(bench):
    driver = bench.driver
    assert driver.negotiate(1 << spec.F_VERSION_1)
    assert bench.transport.negotiated == 1 << spec.F_VERSION_1
    assert driver.negotiate(COMMON_FEATURES | 1 << 3)
    assert bench.transport.negotiated == COMMON_FEATURES | 1 << 3


@pytest.mark.parametrize("features", [0, 1 << 3, COMMON_FEATURES | 1 << 4, 1 << 63 | 1 << 32])
def test_features_ok_is_refused_for_unoffered_features_or_without_version_1(bench, features):
    assert not bench.driver.negotiate(features)
    assert bench.driver.status == ACK | DRV
    assert not bench.driver.status & NEEDS_RESET


def test_driver_features_are_fixed_once_features_ok(bench):
    driver = bench.driver
    assert driver.negotiate(1 << spec.F_VERSION_1)
    driver.write_features(COMMON_FEATURES)
    assert bench.transport.negotiated == 1 << spec.F_VERSION_1


@pytest.mark.parametrize("steps", [
    [DRV],                          # DRIVER before ACKNOWLEDGE
    [ACK, ACK | FOK],               # FEATURES_OK before DRIVER
    [ACK, ACK | DRV, ACK | DRV | DOK],   # DRIVER_OK before FEATURES_OK
    [ACK, ACK | DRV, ACK],          # a bit cleared without a reset
])
def test_status_out_of_order_needs_a_reset(bench, steps):
    driver = bench.driver
    driver.write_features(COMMON_FEATURES)
    for value in steps:
        driver.write(spec.MMIO_STATUS, value)
    assert driver.status & NEEDS_RESET
    assert bench.transport.needs_reset_reason
    assert bench.levels == []                       # before DRIVER_OK: no interrupt
    driver.write(spec.MMIO_STATUS, 0)
    assert driver.status == 0
    assert bench.transport.needs_reset_reason is None


def test_driver_ok_with_refused_features_needs_a_reset(bench):
    driver = bench.driver
    driver.write(spec.MMIO_STATUS, ACK | DRV)
    driver.write_features(1 << 40)
    driver.write(spec.MMIO_STATUS, ACK | DRV | FOK | DOK)
    assert driver.status == ACK | DRV | NEEDS_RESET


def test_the_driver_cannot_set_or_clear_needs_reset(bench):
    driver = bench.driver
    driver.write(spec.MMIO_STATUS, ACK | NEEDS_RESET)
    assert driver.status == ACK
    driver.write(spec.MMIO_STATUS, ACK | DRV | spec.FAILED)
    assert driver.status == ACK | DRV | spec.FAILED


def test_queue_setup_rules(bench):
    driver = bench.driver
    driver.write(spec.MMIO_QUEUE_SEL, 0)
    assert reg(bench, spec.MMIO_QUEUE_NUM_MAX) == 1024
    driver.write(spec.MMIO_QUEUE_SEL, 2)
    assert reg(bench, spec.MMIO_QUEUE_NUM_MAX) == 0          # no such queue
    driver.write(spec.MMIO_QUEUE_READY, 1)
    assert reg(bench, spec.MMIO_QUEUE_READY) == 0 and driver.status == 0
    driver.write(spec.MMIO_QUEUE_SEL, 5000)                  # ignored, as QEMU does
    assert bench.transport.queue_sel == 2

    driver.write(spec.MMIO_QUEUE_SEL, 0)
    driver.write(spec.MMIO_QUEUE_NUM, 8)
    driver.write(spec.MMIO_QUEUE_READY, 1)                   # before FEATURES_OK
    assert driver.status & NEEDS_RESET and reg(bench, spec.MMIO_QUEUE_READY) == 0


@pytest.mark.parametrize("num, desc", [(0, 0x10000), (6, 0x10000), (2048, 0x10000), (8, 0xFFFC0)])
def test_bad_queue_configurations_need_a_reset(bench, num, desc):
    driver = bench.driver
    assert driver.negotiate()
    driver.write(spec.MMIO_QUEUE_SEL, 0)
    driver.write(spec.MMIO_QUEUE_NUM, num)
    driver.write(spec.MMIO_QUEUE_DESC_LOW, desc)
    driver.write(spec.MMIO_QUEUE_DRIVER_LOW, 0x20000)
    driver.write(spec.MMIO_QUEUE_DEVICE_LOW, 0x30000)
    driver.write(spec.MMIO_QUEUE_READY, 1)
    assert driver.status & NEEDS_RESET
    assert reg(bench, spec.MMIO_QUEUE_READY) == 0


def test_queue_registers_are_fixed_while_ready(bench):
    queue = bench.driver.start()[0]
    driver = bench.driver
    driver.write(spec.MMIO_QUEUE_SEL, 0)
    driver.write(spec.MMIO_QUEUE_NUM, 16)
    driver.write(spec.MMIO_QUEUE_DESC_LOW, 0)
    active = bench.transport.queues[0].active
    assert (active.size, active.desc) == (8, queue.desc)
    driver.write(spec.MMIO_QUEUE_READY, 0)
    assert reg(bench, spec.MMIO_QUEUE_READY) == 0 and bench.transport.queues[0].active is None


def test_a_request_round_trip_raises_and_acks_the_interrupt(bench):
    q0, q1 = bench.driver.start()
    bench.memory.write(0x80000, b"hello")
    head = q1.add([(0x80000, 5, False), (0x81000, 8, True)])
    q1.kick()
    assert bench.device.handled == []            # nothing on the vCPU thread
    assert bench.run() == 1
    assert bench.device.handled == [(1, head)]
    assert q1.take_used() == [(head, 5)]
    assert bench.memory.read(0x81000, 5) == b"hello"
    assert bench.irq_level and bench.driver.read(spec.MMIO_INTERRUPT_STATUS) == spec.INT_USED_BUFFER
    bench.driver.ack_interrupt()
    assert not bench.irq_level and bench.driver.read(spec.MMIO_INTERRUPT_STATUS) == 0


def test_notifications_coalesce_into_one_worker_call(bench):
    q0, _ = bench.driver.start()
    for _ in range(1000):
        q0.kick()
    assert len(bench.context.worker.calls) == 1
    bench.run()


def test_buffers_are_used_only_after_driver_ok(bench):
    driver = bench.driver
    assert driver.negotiate()
    queue = driver.setup_queue(0, 8, 0x10000)
    head = queue.add([(0x80000, 4, True)])
    queue.kick()
    bench.run()
    assert queue.take_used() == []
    driver.set_status(DOK)
    bench.run()
    assert queue.take_used() == [(head, 0)]


def test_notify_of_an_absent_queue_is_ignored(bench):
    bench.driver.start()
    bench.run()
    for value in (2, 0xFFFF, 0xFFFFFFFF):
        bench.driver.write(spec.MMIO_QUEUE_NOTIFY, value)
    assert bench.run() == 0


def test_a_broken_ring_after_driver_ok_needs_reset_with_a_config_interrupt(bench):
    q0, _ = bench.driver.start()
    q0.publish(200)                               # a head past the table
    q0.kick()
    bench.run()
    driver = bench.driver
    assert driver.status & NEEDS_RESET
    assert "past the end" in bench.transport.needs_reset_reason
    assert driver.read(spec.MMIO_INTERRUPT_STATUS) == spec.INT_CONFIG_CHANGE and bench.irq_level
    assert driver.read(spec.MMIO_CONFIG_GENERATION) == 1
    head = q0.add([(0x80000, 4, True)])           # a good chain now: still not used
    q0.kick()
    bench.run()
    assert q0.take_used() == []
    assert bench.failures == []
    driver.reset()
    assert driver.status == 0 and not bench.irq_level
    assert driver.read(spec.MMIO_INTERRUPT_STATUS) == 0
    assert head is not None


def test_reset_clears_everything(bench):
    q0, q1 = bench.driver.start()
    q0.add([(0x80000, 4, True)])
    q0.kick()
    bench.run()
    driver = bench.driver
    driver.write(spec.MMIO_QUEUE_SEL, 1)
    driver.write(spec.MMIO_DEVICE_FEATURES_SEL, 1)
    resets = bench.device.resets
    driver.reset()
    transport = bench.transport
    assert (transport.status, transport.negotiated, transport.queue_sel, transport.interrupt_status,
            transport.device_features_sel) == (0, 0, 0, 0, 0)
    assert all(queue.active is None for queue in transport.queues)
    assert bench.device.resets == resets + 1 and not bench.irq_level
    bench.driver.start()                           # works again from scratch


def test_no_interrupt_flag_and_event_index_suppress_interrupts(bench):
    q0, _ = bench.driver.start(features=COMMON_FEATURES & ~(1 << spec.F_RING_EVENT_IDX))
    q0.set_no_interrupt(True)
    q0.add([(0x80000, 4, True)])
    q0.kick()
    bench.run()
    assert len(q0.take_used()) == 1 and not bench.irq_level

    q0, _ = bench.driver.start()                   # with event indices
    q0.set_used_event(1)                           # interrupt when entry 1 is used
    q0.add([(0x80000, 4, True)])
    q0.kick()
    bench.run()
    assert bench.irq_level                         # the first decision always interrupts
    bench.driver.ack_interrupt()
    q0.add([(0x80000, 4, True)])
    q0.kick()
    bench.run()
    assert bench.irq_level                         # entry 1 used
    bench.driver.ack_interrupt()
    q0.add([(0x80000, 4, True)])
    q0.kick()
    bench.run()
    assert not bench.irq_level                     # entry 2: the driver did not ask
    assert len(q0.take_used()) == 3


def test_event_index_tells_the_driver_where_to_notify(bench):
    q0, _ = bench.driver.start()
    for _ in range(3):
        q0.add([(0x80000, 4, True)])
    q0.kick()
    bench.run()
    assert q0.avail_event == 3


def test_without_an_irq_line_the_device_still_works():
    with VirtioBench(Echo(), irq=False) as bench:
        q0, _ = bench.driver.start()
        head = q0.add([(0x80000, 4, True)])
        q0.kick()
        bench.run()
        assert q0.take_used() == [(head, 0)]
        assert bench.driver.read(spec.MMIO_INTERRUPT_STATUS) == 1


def test_a_reset_during_a_request_reports_the_old_status_until_it_ends(bench):
    q0, _ = bench.driver.start()
    seen = []

    def handle(queue_index, chain):
        bench.driver.reset()                       # the driver resets from a vCPU meanwhile
        seen.append(bench.driver.status)
        return 0

    bench.device.handle = handle
    q0.add([(0x80000, 4, True)])
    q0.kick()
    bench.run()
    assert seen == [ACK | DRV | FOK | DOK]          # not 0 while the request runs
    assert bench.driver.status == 0                 # 0 once it is over
    assert not bench.irq_level and bench.driver.read(spec.MMIO_INTERRUPT_STATUS) == 0


def test_empty_slot_reads_like_qemus_empty_transport():
    slot = EmptySlot()
    assert slot.read(0, 4) == (0x74726976).to_bytes(4, "little")
    assert slot.read(4, 4) == (2).to_bytes(4, "little")
    assert slot.read(8, 4) == bytes(4)
    assert slot.read(0xC, 4) == VENDOR_ID.to_bytes(4, "little")
    assert slot.read(0, 1) == b"\x76"
    assert slot.read(0, 8) == (0x74726976 | 2 << 32).to_bytes(8, "little")
    assert slot.read(0x70, 4) == bytes(4)
    slot.write(0x70, b"\x01\0\0\0")
    assert slot.read(0x70, 4) == bytes(4)


def test_transport_is_built_before_a_context():
    transport = MmioTransport(Echo())
    transport.notify(0)                            # no context yet, status 0: nothing
    assert transport.read(spec.MMIO_STATUS, 4) == bytes(4)


def test_cached_reads_are_published_as_they_change(bench):
    published = bench.context.registers.values
    assert published[spec.MMIO_MAGIC_VALUE] == 0x74726976 and published[spec.MMIO_DEVICE_ID] == 0x55
    assert published[spec.MMIO_INTERRUPT_STATUS] == 0
    q0, _ = bench.driver.start()
    q0.add([(0x80000, 4, True)])
    q0.kick()
    bench.run()
    assert published[spec.MMIO_INTERRUPT_STATUS] == spec.INT_USED_BUFFER
    bench.driver.ack_interrupt()
    assert published[spec.MMIO_INTERRUPT_STATUS] == 0
    assert bench.transport.cached_reads == ((0, 4), (4, 4), (8, 4), (0xC, 4), (0x60, 4))
