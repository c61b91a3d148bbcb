"""The virtio-mmio transport against a model of the specification's rules.

A hypothesis state machine plays a driver that does anything in any order:
status values (in order, out of order, clearing bits, 0), feature words
(offered or not, with or without VERSION_1), queue selection, sizes and
ring addresses (valid, invalid, outside RAM), QueueReady, requests,
notifications, interrupt acks, and lets the worker run whenever it likes.
The model below is the virtio 1.2 text (2.1, 3.1.1, 4.2.2, 4.2.3):

- status bits are set in order ACKNOWLEDGE, DRIVER, FEATURES_OK,
  DRIVER_OK; clearing one without a reset, or setting one early, is a
  broken rule: DEVICE_NEEDS_RESET, and the write is otherwise dropped;
- FEATURES_OK stays clear for a feature set that is not a subset of the
  offered one or lacks VERSION_1; DRIVER_OK on top of that is a broken rule;
- a queue made ready needs FEATURES_OK, a power-of-two size up to 1024 and
  rings in RAM; otherwise DEVICE_NEEDS_RESET; while ready its size and
  addresses are fixed;
- the device uses buffers only after DRIVER_OK and never once it needs a
  reset; the interrupt line is high exactly while InterruptStatus is not 0;
- writing 0 resets everything.

After every step the registers are read back and compared with the model.
"""

from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from pyvmm.devices.virtio import spec
from pyvmm.devices.virtio.device import VirtioDevice
from pyvmm.devices.virtio.mmio import COMMON_FEATURES, MAX_QUEUE_SIZE
from pyvmm.devices.virtio.queue import ring_sizes
from pyvmm.testing import fuzz_settings
from pyvmm.testing.virtio import DriverQueue, VirtioBench

RAM = 1 << 20
QUEUES = 2
DEVICE_FEATURES = 1 << 5 | 1 << 40
OFFERED = COMMON_FEATURES | DEVICE_FEATURES
ORDER = [(spec.DRIVER, spec.ACKNOWLEDGE), (spec.FEATURES_OK, spec.DRIVER),
         (spec.DRIVER_OK, spec.FEATURES_OK)]
STATUS_BITS = [spec.ACKNOWLEDGE, spec.DRIVER, spec.FEATURES_OK, spec.DRIVER_OK,
               spec.DEVICE_NEEDS_RESET, spec.FAILED]


class Echo(VirtioDevice):
    device_id = 0x42
    queue_count = QUEUES
    features = DEVICE_FEATURES

    def handle(self, queue_index, chain):
        return chain.write(chain.read())


def area_base(index):
    return 0x10000 + 0x10000 * index


class QueueModel:
    def __init__(self):
        self.num = 0
        self.desc = self.driver = self.device = 0
        self.ready = False
        self.ring = None          # DriverQueue once ready with a usable layout
        self.waiting = []         # heads made available, not used yet


class TransportMachine(RuleBasedStateMachine):
    def __init__(self):
        super().__init__()
        self.bench = VirtioBench(Echo(), memory_size=RAM)
        self.driver = self.bench.driver
        self.reset_model()

    def teardown(self):
        self.bench.close()

    def reset_model(self):
        self.status = 0
        self.driver_words = [0, 0]
        self.driver_select = 0
        self.negotiated = 0
        self.queue_sel = 0
        self.queues = [QueueModel() for _ in range(QUEUES)]

    # --- the model's rules ---------------------------------------------------------
    def broken(self):
        self.status |= spec.DEVICE_NEEDS_RESET

    def model_status_write(self, value):
        if value == 0:
            self.reset_model()
            return
        old = self.status
        value = value & ~spec.DEVICE_NEEDS_RESET | old & spec.DEVICE_NEEDS_RESET
        added = value & ~old
        if old & ~value or any(added & bit and not value & needed for bit, needed in ORDER):
            self.broken()
            return
        if added & spec.FEATURES_OK:
            wanted = self.driver_words[0] | self.driver_words[1] << 32
            if wanted & ~OFFERED or not wanted & 1 << spec.F_VERSION_1:
                value &= ~spec.FEATURES_OK
                if added & spec.DRIVER_OK:
                    self.broken()
                    return
            else:
                self.negotiated = wanted
        self.status = value

    @property
    def running(self):
        return self.status & spec.DRIVER_OK and not self.status & spec.DEVICE_NEEDS_RESET

    def selected(self):
        return self.queues[self.queue_sel] if self.queue_sel < QUEUES else None

    # --- rules ---------------------------------------------------------------------
    @rule(value=st.one_of(st.sampled_from(STATUS_BITS),
                          st.lists(st.sampled_from(STATUS_BITS), min_size=1, max_size=5)
                          .map(lambda bits: sum(set(bits))),
                          st.integers(0, 0x1FF)))
    def write_status(self, value):
        self.driver.write(spec.MMIO_STATUS, value)
        self.model_status_write(value & 0xFF)

    @rule()
    def next_status_step(self):
        """The next bit a well-behaved driver would set."""
        for bit in (spec.ACKNOWLEDGE, spec.DRIVER, spec.FEATURES_OK, spec.DRIVER_OK):
            if not self.status & bit:
                value = self.status | bit
                self.driver.write(spec.MMIO_STATUS, value)
                self.model_status_write(value)
                return

    @rule(sizes=st.lists(st.sampled_from([1, 8, 16, 1024]), min_size=QUEUES, max_size=QUEUES))
    def start_device(self, sizes):
        """A whole well-behaved initialisation, so the rest happens to a running device."""
        self.reset()
        self.next_status_step()
        self.next_status_step()
        self.offer_everything()
        self.next_status_step()
        for index, size in enumerate(sizes):
            self.select_queue(index)
            self.set_size(size)
            self.set_good_areas()
            self.set_ready(1)
        self.next_status_step()
        assert self.running

    @rule()
    def reset(self):
        self.driver.write(spec.MMIO_STATUS, 0)
        self.model_status_write(0)

    @rule(select=st.sampled_from([0, 1, 2]),
          value=st.one_of(st.sampled_from([0, 1 << spec.F_VERSION_1 - 32, OFFERED & 0xFFFFFFFF,
                                           OFFERED >> 32, COMMON_FEATURES & 0xFFFFFFFF]),
                          st.integers(0, 0xFFFFFFFF)))
    def write_features(self, select, value):
        self.driver.write(spec.MMIO_DRIVER_FEATURES_SEL, select)
        self.driver.write(spec.MMIO_DRIVER_FEATURES, value)
        if select < 2 and not self.status & spec.FEATURES_OK:
            self.driver_words[select] = value

    @rule()
    def offer_everything(self):
        self.write_features(0, OFFERED & 0xFFFFFFFF)
        self.write_features(1, OFFERED >> 32)

    @rule(index=st.sampled_from([0, 1, 2, 1023, 1024, 0xFFFFFFFF]))
    def select_queue(self, index):
        self.driver.write(spec.MMIO_QUEUE_SEL, index)
        if index < 1024:
            self.queue_sel = index

    @rule(num=st.sampled_from([0, 1, 2, 3, 8, 16, 100, 1024, 2048]))
    def set_size(self, num):
        self.driver.write(spec.MMIO_QUEUE_NUM, num)
        queue = self.selected()
        if queue is not None and not queue.ready:
            queue.num = num

    def write_areas(self, desc, avail, used):
        for offset, value in ((spec.MMIO_QUEUE_DESC_LOW, desc), (spec.MMIO_QUEUE_DRIVER_LOW, avail),
                              (spec.MMIO_QUEUE_DEVICE_LOW, used)):
            self.driver.write(offset, value)
            self.driver.write(offset + 4, value >> 32)
        queue = self.selected()
        if queue is not None and not queue.ready:
            queue.desc, queue.driver, queue.device = desc, avail, used

    @rule()
    def set_good_areas(self):
        base = area_base(min(self.queue_sel, QUEUES))
        self.write_areas(base, base + 0x4000, base + 0x5000)

    @rule(which=st.integers(0, 2), address=st.sampled_from([RAM - 2, RAM, 1 << 40, 0xFEB00000]))
    def set_bad_area(self, which, address):
        base = area_base(min(self.queue_sel, QUEUES))
        areas = [base, base + 0x4000, base + 0x5000]
        areas[which] = address
        self.write_areas(*areas)

    @rule(value=st.sampled_from([0, 1, 7]))
    def set_ready(self, value):
        self.driver.write(spec.MMIO_QUEUE_READY, value)
        queue = self.selected()
        if queue is None:
            return
        if not value:
            queue.ready, queue.ring, queue.waiting = False, None, []
            return
        if queue.ready:
            return
        num = queue.num
        sizes = ring_sizes(num) if num else (0, 0, 0)
        valid = (0 < num <= MAX_QUEUE_SIZE and num & (num - 1) == 0
                 and all(addr + length <= RAM
                         for addr, length in zip((queue.desc, queue.driver, queue.device), sizes)))
        if not self.status & spec.FEATURES_OK or not valid:
            self.broken()
            return
        queue.ready = True
        index = self.queue_sel
        if (queue.desc, queue.driver, queue.device) == (area_base(index), area_base(index) + 0x4000,
                                                         area_base(index) + 0x5000):
            self.bench.memory.fill(area_base(index), 0x8000)
            queue.ring = DriverQueue(self.driver, index, num, 0,
                                     areas=(queue.desc, queue.driver, queue.device))

    @precondition(lambda self: any(q.ring is not None and q.ring.free for q in self.queues))
    @rule(data=st.data())
    def request(self, data):
        candidates = [i for i, q in enumerate(self.queues) if q.ring is not None and q.ring.free]
        index = data.draw(st.sampled_from(candidates))
        queue = self.queues[index]
        ring = queue.ring
        writable = 2 if len(ring.free) >= 2 else 0
        buffers = [(0x80000, 4, False)] + ([(0x90000, 8, True)] if writable else [])
        head = ring.add(buffers)
        queue.waiting.append((head, 4 if writable else 0))
        ring.set_used_event(ring.used_idx)
        ring.kick()

    @rule(index=st.sampled_from([0, 1, 2, 0xFFFFFFFF]))
    def notify(self, index):
        self.driver.write(spec.MMIO_QUEUE_NOTIFY, index)

    @rule(bits=st.integers(0, 3))
    def ack(self, bits):
        self.driver.write(spec.MMIO_INTERRUPT_ACK, bits)

    @rule()
    def run(self):
        self.bench.run()
        for queue in self.queues:
            if queue.ring is None:
                continue
            used = queue.ring.take_used()
            if self.running:
                assert used == queue.waiting, (used, queue.waiting)
                queue.waiting = []
            else:
                assert used == []

    # --- invariants -------------------------------------------------------------------
    @invariant()
    def registers_match_the_model(self):
        driver = self.driver
        assert driver.read(spec.MMIO_STATUS) == self.status
        assert driver.read(spec.MMIO_MAGIC_VALUE) == spec.MMIO_MAGIC
        assert driver.read(spec.MMIO_VERSION) == 2
        queue = self.selected()
        assert driver.read(spec.MMIO_QUEUE_READY) == int(queue is not None and queue.ready)
        assert driver.read(spec.MMIO_QUEUE_NUM_MAX) == (MAX_QUEUE_SIZE if queue is not None else 0)
        if self.status & spec.FEATURES_OK:
            negotiated = self.bench.transport.negotiated
            assert negotiated == self.negotiated
            assert not negotiated & ~OFFERED and negotiated & 1 << spec.F_VERSION_1

    @invariant()
    def interrupt_line_follows_interrupt_status(self):
        status = self.driver.read(spec.MMIO_INTERRUPT_STATUS)
        assert self.bench.irq_level == bool(status)
        # What a cached read answers without an exit is the register itself.
        published = self.bench.context.registers.values
        assert published[spec.MMIO_INTERRUPT_STATUS] == status
        assert published[spec.MMIO_MAGIC_VALUE] == spec.MMIO_MAGIC

    @invariant()
    def no_device_failure(self):
        assert self.bench.failures == []


TransportMachine.TestCase.settings = fuzz_settings(max_examples=200, stateful_step_count=40)
test_transport_follows_the_specification = TransportMachine.TestCase
