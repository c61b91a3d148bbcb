"""The virtio-mmio transport, version 2 (virtio 1.2, 4.2), and empty slots.

MmioTransport is the bus device of one virtio device: 0x200 bytes of
registers followed by the device's configuration space. It keeps the
driver to the specification's rules, and answers a rule broken with
DEVICE_NEEDS_RESET (plus a configuration-change interrupt once the driver
is running, as QEMU does), never with an exception:

- status: bits are set in order (ACKNOWLEDGE, DRIVER, FEATURES_OK,
  DRIVER_OK), never cleared but by writing 0 (reset); FEATURES_OK stays
  clear when the driver asked for a feature not offered, or not for
  VIRTIO_F_VERSION_1 (there is no legacy interface behind version 2);
- queues: configured while not ready, made ready after FEATURES_OK with a
  power-of-two size up to 1024 and rings inside guest RAM; their registers
  are ignored while ready;
- registers are 32-bit: other sizes read 0 and are not written; 8-byte
  accesses act as two 4-byte ones (QEMU's memory core splits them so);
  the configuration space takes 1, 2 and 4 bytes, and reads past its end
  give all-ones.

Delivery declarations (pyvmm/devices/bus.py): QueueNotify is a doorbell
per queue (an ioeventfd on the fast path, delivered on the worker), and the
identification registers and InterruptStatus are cached reads: the device
publishes InterruptStatus whenever it changes (before it raises the line),
so the driver's interrupt handler reads it without an exit.

Threads. Registers are read and written on vCPU threads (QueueNotify also
on the device's worker, when an ioeventfd took it). A notification
only marks its queue and hands the work to the device's worker thread
(context.worker), which pops chains, runs the device and raises the
interrupt (context.irq, level-triggered: high while InterruptStatus is not
zero). One lock keeps the registers and the queue bookkeeping consistent;
requests run outside it. A reset while the worker is inside a request
keeps reporting the old status until that request is over, so a driver
that waits for status 0 (as it must) never sees the device touch memory
after it.
"""

from __future__ import annotations

import threading
from typing import List, Optional

from ..state import StateReader
from . import spec
from .queue import QueueError, SplitQueue, ring_sizes

VENDOR_ID = 0x4D565950                 # "PYVM"
MAX_QUEUE_SIZE = 1024                  # QueueNumMax (QEMU's VIRTQUEUE_MAX_SIZE)
QUEUE_SELECT_LIMIT = 1024              # QueueSel values QEMU accepts (VIRTIO_QUEUE_MAX)
COMMON_FEATURES = (1 << spec.F_VERSION_1 | 1 << spec.F_RING_INDIRECT_DESC
                   | 1 << spec.F_RING_EVENT_IDX)
ORDER = ((spec.DRIVER, spec.ACKNOWLEDGE), (spec.FEATURES_OK, spec.DRIVER),
         (spec.DRIVER_OK, spec.FEATURES_OK))
STATUS_BITS = (spec.ACKNOWLEDGE | spec.DRIVER | spec.DRIVER_OK | spec.FEATURES_OK | spec.DEVICE_NEEDS_RESET
               | spec.FAILED)
MAX_REASON = 1000                      # characters of a saved needs-reset reason
U16, U32, U64 = 0xFFFF, 0xFFFFFFFF, (1 << 64) - 1
NO_SHARED_MEMORY = 0xFFFFFFFF          # SHMLen/SHMBase of a region that does not exist
IDENTIFICATION = (spec.MMIO_MAGIC_VALUE, spec.MMIO_VERSION, spec.MMIO_DEVICE_ID, spec.MMIO_VENDOR_ID)


class QueueConfig:
    """What the driver wrote for one queue, and its SplitQueue once ready."""

    __slots__ = ("num", "desc", "driver", "device", "active")

    def __init__(self) -> None:
        self.num = 0
        self.desc = self.driver = self.device = 0
        self.active: Optional[SplitQueue] = None


class MmioTransport:
    """virtio-mmio version 2 in front of a VirtioDevice (pyvmm.devices.virtio.device).

    Register it with machine.add_mmio_device(base, 0x200, transport, irq=N):
    it gets its device context then (attach). `doorbells` lets the machine
    deliver QueueNotify through an ioeventfd.
    """

    def __init__(self, device, vendor_id: int = VENDOR_ID) -> None:
        self.device = device
        self.vendor_id = vendor_id
        self.offered = COMMON_FEATURES | device.features
        self.doorbells = tuple((spec.MMIO_QUEUE_NOTIFY, 4, index) for index in range(device.queue_count))
        self.cached_reads = tuple((offset, 4) for offset in IDENTIFICATION + (spec.MMIO_INTERRUPT_STATUS,))
        self.context = None
        self._registers = None                 # the RegisterState the cached reads come from
        self._lock = threading.Lock()
        self._irq = None
        self._epoch = 0
        self._busy = 0                 # worker passes over a queue, outside the lock
        self._status_while_draining: Optional[int] = None
        self._pending = [False] * device.queue_count
        self._scheduled = False
        self.needs_reset_reason: Optional[str] = None
        self.config_generation = 0
        self.interrupt_status = 0
        self._closed = False
        # Counters for benchmarks: register accesses that reached the device
        # (exits, or none answered from a cached value), notifications,
        # worker passes over a queue, interrupts raised.
        self.accesses = self.notifications = self.passes = self.interrupts = 0
        self._clear()
        device.bind(self)

    def _clear(self) -> None:
        self.status = 0
        self.device_features_sel = 0
        self.driver_features_sel = 0
        self.driver_features = [0, 0]
        self.negotiated = 0
        self.queue_sel = 0
        self.queues: List[QueueConfig] = [QueueConfig() for _ in range(self.device.queue_count)]
        self._set_interrupt_status(0)
        self._pending = [False] * self.device.queue_count

    def attach(self, context) -> None:
        self.context = context
        self._irq = context.irq
        self._registers = getattr(context, "registers", None)
        if self._registers is not None:
            with self._lock:
                for offset in IDENTIFICATION:
                    self._registers.publish(offset, self._register(offset))
                self._set_interrupt_status(self.interrupt_status)

    def _set_interrupt_status(self, value: int) -> None:
        """InterruptStatus, published for cached reads (with the lock held)."""
        self.interrupt_status = value
        if self._registers is not None:
            self._registers.publish(spec.MMIO_INTERRUPT_STATUS, value)

    # --- the bus device --------------------------------------------------------------
    def read(self, offset: int, size: int) -> bytes:
        if size == 8:
            return self.read(offset, 4) + self.read(offset + 4, 4)
        self.accesses += 1
        with self._lock:
            if offset >= spec.MMIO_CONFIG:
                return self._read_config(offset - spec.MMIO_CONFIG, size)
            if size != 4:
                return bytes(size)
            return self._register(offset).to_bytes(4, "little")

    def write(self, offset: int, data: bytes) -> None:
        if len(data) == 8:
            self.write(offset, data[:4])
            self.write(offset + 4, data[4:])
            return
        if offset == spec.MMIO_QUEUE_NOTIFY and len(data) == 4:
            self.notify(int.from_bytes(data, "little"))
            return
        self.accesses += 1
        with self._lock:
            if offset >= spec.MMIO_CONFIG:
                self.device.write_config(offset - spec.MMIO_CONFIG, bytes(data))
            elif len(data) == 4:
                self._write_register(offset, int.from_bytes(data, "little"))

    # --- registers ---------------------------------------------------------------------
    def _register(self, offset: int) -> int:
        queue = self._selected()
        if offset == spec.MMIO_MAGIC_VALUE:
            return spec.MMIO_MAGIC
        if offset == spec.MMIO_VERSION:
            return spec.MMIO_VERSION_MODERN
        if offset == spec.MMIO_DEVICE_ID:
            return self.device.device_id
        if offset == spec.MMIO_VENDOR_ID:
            return self.vendor_id
        if offset == spec.MMIO_DEVICE_FEATURES:
            if self.device_features_sel > 1:
                return 0
            return self.offered >> (32 * self.device_features_sel) & 0xFFFFFFFF
        if offset == spec.MMIO_QUEUE_NUM_MAX:
            return MAX_QUEUE_SIZE if queue is not None else 0
        if offset == spec.MMIO_QUEUE_READY:
            return int(queue is not None and queue.active is not None)
        if offset == spec.MMIO_INTERRUPT_STATUS:
            return self.interrupt_status
        if offset == spec.MMIO_STATUS:
            if self._status_while_draining is not None:
                return self._status_while_draining
            return self.status
        if offset in (spec.MMIO_SHM_LEN_LOW, spec.MMIO_SHM_LEN_HIGH,
                      spec.MMIO_SHM_BASE_LOW, spec.MMIO_SHM_BASE_HIGH):
            return NO_SHARED_MEMORY
        if offset == spec.MMIO_CONFIG_GENERATION:
            return self.config_generation
        return 0       # write-only and reserved registers read as zero (QEMU too)

    def _selected(self) -> Optional[QueueConfig]:
        return self.queues[self.queue_sel] if self.queue_sel < len(self.queues) else None

    def _write_register(self, offset: int, value: int) -> None:
        if offset == spec.MMIO_STATUS:
            self._write_status(value & 0xFF)
        elif offset == spec.MMIO_INTERRUPT_ACK:
            self._set_interrupt_status(self.interrupt_status & ~value)
            if not self.interrupt_status and self._irq is not None:
                self._irq.low()
        elif offset == spec.MMIO_DEVICE_FEATURES_SEL:
            self.device_features_sel = value
        elif offset == spec.MMIO_DRIVER_FEATURES_SEL:
            self.driver_features_sel = value
        elif offset == spec.MMIO_DRIVER_FEATURES:
            if self.driver_features_sel < 2 and not self.status & spec.FEATURES_OK:
                self.driver_features[self.driver_features_sel] = value
        elif offset == spec.MMIO_QUEUE_SEL:
            if value < QUEUE_SELECT_LIMIT:
                self.queue_sel = value
        elif offset == spec.MMIO_QUEUE_READY:
            self._write_queue_ready(value)
        else:
            queue = self._selected()
            if queue is None or queue.active is not None:
                return                  # no such queue, or ready: its set-up is fixed
            if offset == spec.MMIO_QUEUE_NUM:
                queue.num = value
            elif offset in _QUEUE_ADDRESS:
                name, shift = _QUEUE_ADDRESS[offset]
                old = getattr(queue, name)
                setattr(queue, name, old & ~(0xFFFFFFFF << shift) | value << shift)

    def _write_status(self, value: int) -> None:
        if value == 0:
            self._reset()
            return
        old = self.status
        value = (value & ~spec.DEVICE_NEEDS_RESET) | (old & spec.DEVICE_NEEDS_RESET)
        added = value & ~old
        if old & ~value:
            self.needs_reset(f"the driver cleared status bits ({old:#x} -> {value:#x}) "
                             "without a reset")
            return
        for bit, needed in ORDER:
            if added & bit and not value & needed:
                self.needs_reset(f"status bit {bit:#x} set before {needed:#x}")
                return
        if added & spec.FEATURES_OK and not self._negotiate():
            value &= ~spec.FEATURES_OK
            if added & spec.DRIVER_OK:
                self.needs_reset("DRIVER_OK set with FEATURES_OK refused")
                return
        self.status = value
        if added & spec.DRIVER_OK and not value & spec.DEVICE_NEEDS_RESET:
            self.device.activate()
            for index, queue in enumerate(self.queues):
                if queue.active is not None:
                    self._schedule(index)

    def _negotiate(self) -> bool:
        wanted = self.driver_features[0] | self.driver_features[1] << 32
        if wanted & ~self.offered or not wanted >> spec.F_VERSION_1 & 1:
            return False
        if not self.device.accept_features(wanted):
            return False
        self.negotiated = wanted
        return True

    def _write_queue_ready(self, value: int) -> None:
        queue = self._selected()
        if queue is None:
            return
        if not value:
            queue.active = None         # the worker drops what it was doing with it
            return
        if queue.active is not None:
            return
        if not self.status & spec.FEATURES_OK:
            self.needs_reset(f"queue {self.queue_sel} made ready before FEATURES_OK")
            return
        if queue.num > MAX_QUEUE_SIZE:
            self.needs_reset(f"queue {self.queue_sel} of {queue.num} entries (at most {MAX_QUEUE_SIZE})")
            return
        try:
            queue.active = SplitQueue(
                self.context.memory, queue.num, queue.desc, queue.driver, queue.device,
                event_idx=bool(self.negotiated >> spec.F_RING_EVENT_IDX & 1),
                indirect=bool(self.negotiated >> spec.F_RING_INDIRECT_DESC & 1))
        except QueueError as error:
            self.needs_reset(f"queue {self.queue_sel}: {error}")
            return
        if self.status & spec.DRIVER_OK:
            self._schedule(self.queue_sel)

    def _read_config(self, offset: int, size: int) -> bytes:
        config = self.device.config()
        if size in (1, 2, 4):
            if offset + size > len(config):
                return b"\xff" * size
            return config[offset:offset + size]
        return bytes(config[i] if i < len(config) else 0xFF for i in range(offset, offset + size))

    # --- reset and errors ----------------------------------------------------------------
    def _reset(self) -> None:
        if self._busy:
            self._status_while_draining = self.status
        self._epoch += 1
        self._clear()
        self.needs_reset_reason = None
        if self._irq is not None:
            self._irq.low()
        self.device.reset()

    def needs_reset(self, reason: str) -> None:
        """The driver broke a rule: DEVICE_NEEDS_RESET, and the device stops
        using its queues until a reset. Call with the lock held."""
        if self.status & spec.DEVICE_NEEDS_RESET:
            return
        self.needs_reset_reason = reason
        self.status |= spec.DEVICE_NEEDS_RESET
        if self.status & spec.DRIVER_OK:
            self.config_generation = (self.config_generation + 1) & 0xFFFFFFFF
            self._raise(spec.INT_CONFIG_CHANGE)

    def _raise(self, bits: int) -> None:
        self.interrupts += 1
        self._set_interrupt_status(self.interrupt_status | bits)
        if self._irq is not None:
            self._irq.high()

    def config_changed(self) -> None:
        """The device changed its configuration space (any thread)."""
        with self._lock:
            self.config_generation = (self.config_generation + 1) & 0xFFFFFFFF
            if self.status & spec.DRIVER_OK:
                self._raise(spec.INT_CONFIG_CHANGE)

    # --- queue work ------------------------------------------------------------------------
    def notify(self, index: int) -> None:
        """QueueNotify: the driver made buffers available on queue `index`."""
        with self._lock:
            self.notifications += 1
            if index < len(self.queues) and self.status & spec.DRIVER_OK:
                self._schedule(index)

    def serve(self, index: int) -> None:
        """Asks for a pass over queue `index` on the worker (e.g. input arrived)."""
        with self._lock:
            self._schedule(index)

    def _schedule(self, index: int) -> None:
        """Marks the queue; one worker call serves every marked queue, so a
        guest ringing faster than the worker runs costs no memory."""
        self._pending[index] = True
        if not self._scheduled and self.context is not None and not self._closed:
            self._scheduled = True
            self.context.worker.call(self._service)

    def _service(self) -> None:
        with self._lock:
            self._scheduled = False
            marked = [index for index, pending in enumerate(self._pending) if pending]
            self._pending = [False] * len(self._pending)
        for index in marked:
            self.run_queue(index)

    def run_queue(self, index: int) -> None:
        """One pass over a ready queue on the worker: the device serves its
        chains, then the driver gets an interrupt if it wants one."""
        with self._lock:
            config = self.queues[index] if index < len(self.queues) else None
            queue = None if config is None else config.active
            if (queue is None or not self.status & spec.DRIVER_OK
                    or self.status & spec.DEVICE_NEEDS_RESET):
                return
            epoch = self._epoch
            self._busy += 1
            self.passes += 1
        used_before = queue.used_idx
        failure = None
        try:
            while True:
                queue.suppress_notifications()
                if not self.device.process(index, queue):
                    queue.allow_notifications()
                    break
                if not queue.allow_notifications():
                    break
        except QueueError as error:
            failure = f"queue {index}: {error}"
        finally:
            with self._lock:
                self._busy -= 1
                if not self._busy:
                    self._status_while_draining = None
                current = epoch == self._epoch and self.queues[index].active is queue
                if current and failure is not None:
                    self.needs_reset(failure)
                elif (current and queue.used_idx != used_before
                      and not self.status & spec.DEVICE_NEEDS_RESET and queue.needs_interrupt()):
                    self._raise(spec.INT_USED_BUFFER)

    # --- snapshots -------------------------------------------------------------------------
    # Taken and put back only while the device's worker is idle and held
    # (pyvmm.devices.context: DeviceWorker.held): every chain the device
    # popped has been pushed, its used entries written and its interrupt
    # raised, so guest memory (which holds the rings) and this state agree.
    def save_state(self) -> dict:
        """The registers, each queue's set-up and ring indices, and the device
        type's own state (pyvmm/devices/state.py)."""
        with self._lock:
            queues = []
            for config in self.queues:
                active = config.active
                queues.append({
                    "num": config.num, "desc": config.desc, "driver": config.driver, "device": config.device,
                    "ready": active is not None,
                    "last_avail": active.last_avail if active else 0,
                    "used_idx": active.used_idx if active else 0,
                    "signalled_used": active.signalled_used if active else 0,
                    "signalled_valid": active.signalled_valid if active else False,
                })
            return {"device_id": self.device.device_id, "status": self.status,
                    "device_features_sel": self.device_features_sel,
                    "driver_features_sel": self.driver_features_sel,
                    "driver_features": list(self.driver_features), "negotiated": self.negotiated,
                    "queue_sel": self.queue_sel, "interrupt_status": self.interrupt_status,
                    "config_generation": self.config_generation,
                    "needs_reset_reason": self.needs_reset_reason, "queues": queues,
                    "device": self.device.save_state()}

    def restore_state(self, state) -> None:
        """save_state()'s dict back. Everything is checked before anything
        changes (DeviceStateError names the field; the transport is left as
        it was): the device type, status bits set in order, features
        offered and accepted, ready queues of a power-of-two size up to
        MAX_QUEUE_SIZE with their rings inside guest RAM, and no chain left
        popped but unused. The device is activated again if the driver had
        set DRIVER_OK, and each ready queue gets a pass on the worker."""
        name = f"virtio-mmio ({self.device.name})"
        reader = StateReader(state, name)
        device_id = reader.integer("device_id", 0, U32)
        if device_id != self.device.device_id:
            raise reader.fail("device_id", f"a device of type {device_id}, this slot holds type "
                              f"{self.device.device_id} ({self.device.name})")
        status = reader.integer("status", 0, 0xFF)
        if status & ~STATUS_BITS:
            raise reader.fail("status", f"{status:#x} has bits no driver can set")
        for bit, needed in ORDER:
            if status & bit and not status & needed:
                raise reader.fail("status", f"{status:#x} has bit {bit:#x} without {needed:#x}")
        device_features_sel = reader.integer("device_features_sel", 0, U32)
        driver_features_sel = reader.integer("driver_features_sel", 0, U32)
        words = reader.items("driver_features", 2)
        if len(words) != 2 or not all(isinstance(w, int) and not isinstance(w, bool) and 0 <= w <= U32
                                      for w in words):
            raise reader.fail("driver_features", f"{words!r} is not two 32-bit words")
        negotiated = reader.integer("negotiated", 0, U64)
        if status & spec.FEATURES_OK:
            if negotiated != words[0] | words[1] << 32:
                raise reader.fail("negotiated", f"{negotiated:#x} is not what the driver wrote")
            if negotiated & ~self.offered or not negotiated >> spec.F_VERSION_1 & 1 \
                    or not self.device.accept_features(negotiated):
                raise reader.fail("negotiated", f"{negotiated:#x} is not a set of features this device "
                                  "accepts")
        elif negotiated:
            raise reader.fail("negotiated", f"{negotiated:#x} without FEATURES_OK")
        queue_sel = reader.integer("queue_sel", 0, QUEUE_SELECT_LIMIT - 1)
        interrupt_status = reader.integer("interrupt_status", 0, spec.INT_USED_BUFFER | spec.INT_CONFIG_CHANGE)
        if interrupt_status and not status & spec.DRIVER_OK:
            raise reader.fail("interrupt_status", "an interrupt pending before DRIVER_OK")
        generation = reader.integer("config_generation", 0, U32)
        reason = reader.nested("needs_reset_reason")
        if reason is not None and (not isinstance(reason, str) or len(reason) > MAX_REASON):
            raise reader.fail("needs_reset_reason", f"not null or a string of at most {MAX_REASON} characters")
        if (reason is None) != (not status & spec.DEVICE_NEEDS_RESET):
            raise reader.fail("needs_reset_reason", "given without DEVICE_NEEDS_RESET, or missing with it")
        saved_queues = reader.items("queues", len(self.queues))
        if len(saved_queues) != len(self.queues):
            raise reader.fail("queues", f"{len(saved_queues)} queues, the device has {len(self.queues)}")
        device_state = reader.nested("device")
        reader.finish()
        configs, built = [], []
        try:
            for index, saved in enumerate(saved_queues):
                configs.append(self._queue_from_state(saved, f"{name} queue {index}", status, negotiated, built))
            # The device's own state first: it checks before it changes anything.
            self.device.restore_state(StateReader(device_state, f"{name} device"))
            with self._lock:
                old_queues = self.queues
                self.queues = configs
                self.status, self.negotiated, self.queue_sel = status, negotiated, queue_sel
                self.device_features_sel, self.driver_features_sel = device_features_sel, driver_features_sel
                self.driver_features = list(words)
                self.config_generation, self.needs_reset_reason = generation, reason
                self._status_while_draining = None
                self._epoch += 1               # a pass of the old queues, if any, is not this state's
                self._pending = [False] * len(configs)
                self._set_interrupt_status(interrupt_status)
                if self._irq is not None:
                    self._irq.set(bool(interrupt_status))
                if status & spec.DRIVER_OK and not status & spec.DEVICE_NEEDS_RESET:
                    self.device.activate()
                    for index, config in enumerate(configs):
                        if config.active is not None:
                            self._schedule(index)
            for config in old_queues:
                if config.active is not None and all(config.active is not new for new in built):
                    config.active.release()
        except BaseException:
            for active in built:
                if all(config.active is not active for config in self.queues):
                    active.release()
            raise

    def _queue_from_state(self, saved, where: str, status: int, negotiated: int, built: list) -> QueueConfig:
        reader = StateReader(saved, where)
        config = QueueConfig()
        config.num = reader.integer("num", 0, U32)
        config.desc, config.driver, config.device = (reader.integer(key, 0, U64)
                                                     for key in ("desc", "driver", "device"))
        ready = reader.boolean("ready")
        last_avail, used_idx, signalled_used = (reader.integer(key, 0, U16)
                                                for key in ("last_avail", "used_idx", "signalled_used"))
        signalled_valid = reader.boolean("signalled_valid")
        reader.finish()
        if not ready:
            if last_avail or used_idx or signalled_used or signalled_valid:
                raise reader.fail("ready", "ring indices for a queue that is not ready")
            return config
        if not status & spec.FEATURES_OK:
            raise reader.fail("ready", "a ready queue without FEATURES_OK")
        if not (0 < config.num <= MAX_QUEUE_SIZE and config.num & (config.num - 1) == 0):
            raise reader.fail("num", f"{config.num} entries in a ready queue (a power of two up to "
                              f"{MAX_QUEUE_SIZE})")
        if last_avail != used_idx and not status & spec.DEVICE_NEEDS_RESET:
            raise reader.fail("used_idx", f"{used_idx}, but {last_avail} chains were taken: a request "
                              "in flight (a snapshot is taken with none)")
        try:
            active = SplitQueue(self.context.memory, config.num, config.desc, config.driver, config.device,
                                event_idx=bool(negotiated >> spec.F_RING_EVENT_IDX & 1),
                                indirect=bool(negotiated >> spec.F_RING_INDIRECT_DESC & 1))
        except QueueError as error:
            raise reader.fail("ready", str(error)) from None
        built.append(active)
        active.last_avail = active.avail_seen = last_avail
        active.used_idx, active.signalled_used, active.signalled_valid = used_idx, signalled_used, signalled_valid
        config.active = active
        return config

    def written_areas(self) -> list:
        """(guest address, length) of the rings this transport writes through
        views it holds (the used rings): a reset to a checkpoint copies
        them back, since KVM's dirty-page log sees only the guest's writes."""
        with self._lock:
            return [(config.device, ring_sizes(config.num)[2]) for config in self.queues
                    if config.active is not None]

    def close(self) -> None:
        """Once the worker has stopped: the queues give their views of guest
        RAM back (so it can be unmapped) and the device releases its files."""
        with self._lock:
            self._closed = True
            for queue in self.queues:
                if queue.active is not None:
                    queue.active.release()
                    queue.active = None
        self.device.close()

    def __repr__(self) -> str:
        return f"MmioTransport({type(self.device).__name__}, status={self.status:#x})"


_QUEUE_ADDRESS = {
    spec.MMIO_QUEUE_DESC_LOW: ("desc", 0), spec.MMIO_QUEUE_DESC_HIGH: ("desc", 32),
    spec.MMIO_QUEUE_DRIVER_LOW: ("driver", 0), spec.MMIO_QUEUE_DRIVER_HIGH: ("driver", 32),
    spec.MMIO_QUEUE_DEVICE_LOW: ("device", 0), spec.MMIO_QUEUE_DEVICE_HIGH: ("device", 32),
}


class EmptySlot:
    """A virtio-mmio slot with no device: magic, version and vendor, device
    ID 0 and nothing else (as QEMU's transports without a backend), so a
    driver scanning the slots skips it. Writes are ignored. The
    identification registers are cached reads (no exit on the fast path)."""

    cached_reads = tuple((offset, 4) for offset in IDENTIFICATION)
    uses_worker = False          # no thread is started for it (pyvmm.sandbox starts workers early)

    def __init__(self, vendor_id: int = VENDOR_ID) -> None:
        self._values = {spec.MMIO_MAGIC_VALUE: spec.MMIO_MAGIC,
                        spec.MMIO_VERSION: spec.MMIO_VERSION_MODERN,
                        spec.MMIO_VENDOR_ID: vendor_id}

    def attach(self, context) -> None:
        registers = getattr(context, "registers", None)
        if registers is not None:
            for offset in IDENTIFICATION:
                registers.publish(offset, self._values.get(offset, 0))

    def save_state(self) -> dict:
        return {}

    def restore_state(self, state) -> None:
        StateReader(state, "virtio-mmio (empty slot)").finish()

    def read(self, offset: int, size: int) -> bytes:
        if size == 8:
            return self.read(offset, 4) + self.read(offset + 4, 4)
        return self._values.get(offset, 0).to_bytes(4, "little")[:size].ljust(size, b"\0")

    def write(self, offset: int, data: bytes) -> None:
        pass
