"""The device context: interrupt line, worker thread, failure reporting."""

import os
import threading
import time

from pyvmm.devices.context import DeviceContext, DeviceWorker, InterruptLine
from pyvmm.memory import GuestMemory


def test_interrupt_line_drives_only_changes():
    levels = []
    line = InterruptLine(levels.append, "irq5")
    line.high()
    line.high()
    line.low()
    line.low()
    line.set(1)
    assert levels == [True, False, True]
    assert line.level


def test_pulse_is_an_edge_from_either_level():
    levels = []
    line = InterruptLine(levels.append)
    line.pulse()
    line.high()
    line.pulse()
    assert levels == [True, False, True, False]
    assert not line.level


def _wait(predicate, seconds=5.0):
    deadline = time.monotonic() + seconds
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.001)


def test_worker_runs_calls_in_order_off_the_calling_thread():
    seen = []
    worker = DeviceWorker("t")
    try:
        for value in range(100):
            worker.call(lambda v=value: seen.append((v, threading.current_thread().name)))
        _wait(lambda: len(seen) == 100)
        assert [v for v, _ in seen] == list(range(100))
        assert {name for _, name in seen} == {"pyvmm-dev-t"}
    finally:
        worker.close()


def test_call_later_runs_in_time_order_and_cancel_holds():
    seen = []
    worker = DeviceWorker("timers")
    try:
        worker.call_later(0.03, seen.append, "late")
        cancelled = worker.call_later(0.01, seen.append, "never")
        worker.call_later(0.0, seen.append, "now")
        cancelled.cancel()
        _wait(lambda: "late" in seen)
        time.sleep(0.02)
        assert seen == ["now", "late"]
    finally:
        worker.close()


def test_watch_calls_back_while_readable_and_stops_after_unwatch():
    fd = os.eventfd(0, os.EFD_NONBLOCK)
    seen = []

    def drain():
        seen.append(os.eventfd_read(fd))

    worker = DeviceWorker("watch")
    try:
        worker.watch(fd, drain)
        os.eventfd_write(fd, 3)
        _wait(lambda: seen == [3])
        worker.unwatch(fd)
        os.eventfd_write(fd, 1)
        time.sleep(0.05)
        assert seen == [3]
    finally:
        worker.close()
        os.close(fd)


def test_a_raising_callback_fails_the_device_by_name():
    failures = []
    context = DeviceContext("virtio-blk", memory=None, on_failure=failures.append)
    context.worker.call(lambda: 1 / 0)
    _wait(lambda: failures)
    assert failures == ["device virtio-blk: ZeroDivisionError: division by zero"]
    context.close()


def test_close_from_a_callback_and_twice_leaks_no_thread():
    before = threading.active_count()
    for _ in range(20):
        context = DeviceContext("d", memory=None)
        done = threading.Event()

        def stop_self(context=context, done=done):
            context.worker.close()
            done.set()

        context.worker.call(stop_self)
        assert done.wait(5)
        context.close()
        context.close()
    _wait(lambda: threading.active_count() == before)


def test_context_memory_is_bounds_checked_guest_ram():
    with GuestMemory([(0, 1 << 20)]) as memory:
        context = DeviceContext("dma", memory)
        context.memory.write(0x1000, b"abc")
        assert context.memory.read(0x1000, 3) == b"abc"
        assert not context.memory.contains((1 << 20) - 1, 2)


def test_a_closed_context_starts_no_worker_and_drops_calls():
    before = threading.active_count()
    seen = []
    context = DeviceContext("late", memory=None)
    context.worker.call(seen.append, 1)
    _wait(lambda: seen == [1])
    context.close()
    _wait(lambda: threading.active_count() == before)
    context.worker.call(seen.append, 2)          # e.g. a doorbell delivered during teardown
    context.worker.call_later(0, seen.append, 3)
    context.worker.watch(0, lambda: seen.append(4))
    time.sleep(0.05)
    assert seen == [1] and threading.active_count() == before


class FakeIrqFd:
    """What KVM's resampling irqfd looks like to the line: two eventfds."""

    def __init__(self):
        from pyvmm.kvm.eventfd import EventFd
        self.trigger, self.resample = EventFd(), EventFd()

    def signal(self):
        self.trigger.signal()


def test_a_resampled_line_is_raised_again_after_each_eoi_while_it_is_high():
    from pyvmm.machine.devices import resampled_line
    irqfd = FakeIrqFd()
    worker = DeviceWorker("line")
    try:
        line = resampled_line(irqfd, worker, "gsi20")
        line.high()
        assert irqfd.trigger.take() == 1
        irqfd.resample.signal()                  # the guest's EOI: KVM lowered it
        _wait(lambda: irqfd.trigger.take() == 1)
        line.low()                               # nothing to do: the next EOI ends it
        assert irqfd.trigger.take() == 0
        irqfd.resample.signal()
        time.sleep(0.05)
        assert irqfd.trigger.take() == 0         # low: not raised again
    finally:
        worker.close()
        irqfd.trigger.close()
        irqfd.resample.close()


def test_cancelled_timers_do_not_pile_up():
    """A device that re-arms a far timer on every register write (the RTC
    with its alarm a day away) cancels as many as it makes: they must not
    stay queued until they would have been due."""
    worker = DeviceWorker("timers")
    try:
        fired = []
        for _ in range(10_000):
            worker.call_later(3600, fired.append, "stale").cancel()
        keep = worker.call_later(0.01, fired.append, "kept")
        assert worker.queued_timers() <= 64
        _wait(lambda: fired)
        assert fired == ["kept"] and not keep.cancelled
    finally:
        worker.close()


def test_cancel_after_the_timer_ran_changes_nothing():
    worker = DeviceWorker("timers")
    try:
        fired = []
        timer = worker.call_later(0, fired.append, 1)
        _wait(lambda: fired)
        timer.cancel()
        timer.cancel()
        later = worker.call_later(0.01, fired.append, 2)
        _wait(lambda: len(fired) == 2)
        assert worker.queued_timers() == 0 and not later.cancelled
    finally:
        worker.close()


def test_catch_up_runs_before_every_call_timer_and_watch():
    events = []
    worker = DeviceWorker("caught-up", catch_up=lambda: events.append("catch-up"))
    readable, writable = os.pipe()
    done = threading.Event()
    try:
        worker.call(events.append, "call")
        worker.call_later(0.01, events.append, "timer")

        def on_readable():
            os.read(readable, 1)
            events.append("watch")
            done.set()
        time.sleep(0.1)
        worker.watch(readable, on_readable)
        os.write(writable, b"x")
        assert done.wait(5)
    finally:
        worker.close()
        os.close(readable)
        os.close(writable)
    assert events == ["catch-up", "call", "catch-up", "timer", "catch-up", "watch"]


def test_a_held_worker_runs_no_callback_until_released_and_the_holder_may_unwatch():
    worker = DeviceWorker("held")
    started, release, ran = threading.Event(), threading.Event(), []
    try:
        worker.call(lambda: (started.set(), release.wait(5), ran.append("running")))
        assert started.wait(5)
        holder_in = threading.Event()

        def hold():
            with worker.held():                  # waits for the running callback to end
                holder_in.set()
                worker.call(ran.append, "queued")
                read_end, write_end = os.pipe()
                os.write(write_end, b"x")
                worker.watch(read_end, lambda: ran.append("readable"))
                time.sleep(0.1)
                snapshot.append(list(ran))
                worker.unwatch(read_end)         # from the holder: no deadlock
                os.close(read_end)
                os.close(write_end)
        snapshot = []
        holder = threading.Thread(target=hold)
        holder.start()
        time.sleep(0.05)
        assert not holder_in.is_set()            # a callback was running
        release.set()
        holder.join(5)
        assert not holder.is_alive()
        assert snapshot == [["running"]]         # nothing ran while held
        assert worker.settle()
        assert ran == ["running", "queued"]      # queued meanwhile: ran afterwards; unwatched: never
    finally:
        release.set()
        worker.close()


def test_a_context_without_a_worker_holds_nothing_and_a_worker_cannot_hold_itself():
    memory = GuestMemory([(0, 0x10000)])
    context = DeviceContext("idle", memory)
    try:
        with context.held():
            pass
        failures = []

        def inside():
            try:
                with context.worker.held():
                    pass
            except RuntimeError as error:
                failures.append(error)
        context.worker.call(inside)
        assert context.settle()
        assert len(failures) == 1
    finally:
        context.close()
        memory.close()
