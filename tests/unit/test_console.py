"""Console output never blocks: a bounded backlog, non-blocking writes, and a
final flush that waits only while the output makes progress."""

import fcntl
import os
import threading
import time

from pyvmm.console import BufferOutput, ConsoleOutput


def test_a_pipe_nobody_reads_fills_the_backlog_then_drops_and_counts():
    read_end, write_end = os.pipe()
    try:
        output = ConsoleOutput(write_end, limit=100_000)
        for _ in range(100):
            output.write(b"x" * 10_000)
            output.flush()                       # returns at once, whatever the pipe holds
        assert output.dropped > 0
        assert len(output.pending) <= 100_000
        started = time.monotonic()
        output.finish(patience=0.3)
        assert time.monotonic() - started < 2
        assert not output.pending
        total = 100 * 10_000
        taken = 0
        os.set_blocking(read_end, False)
        while True:
            try:
                taken += len(os.read(read_end, 1 << 16))
            except BlockingIOError:
                break
        assert taken + output.dropped == total      # every byte was written or counted
    finally:
        os.close(read_end)
        os.close(write_end)


def test_finish_waits_for_a_slow_reader_and_loses_nothing():
    read_end, write_end = os.pipe()
    received = bytearray()

    def slow_reader():
        while True:
            time.sleep(0.02)
            chunk = os.read(read_end, 4096)
            if not chunk:
                return
            received.extend(chunk)

    reader = threading.Thread(target=slow_reader)
    reader.start()
    try:
        output = ConsoleOutput(write_end)
        text = bytes(range(256)) * 1000
        output.write(text)
        output.finish(patience=0.5)
        output.close()
        os.close(write_end)
        write_end = None
        reader.join(10)
        assert bytes(received) == text and output.dropped == 0
    finally:
        if write_end is not None:
            os.close(write_end)
        os.close(read_end)


def test_the_callers_file_description_stays_blocking():
    read_end, write_end = os.pipe()
    try:
        output = ConsoleOutput(write_end)
        assert not fcntl.fcntl(write_end, fcntl.F_GETFL) & os.O_NONBLOCK
        assert output.fd != write_end                # a description of its own
        output.close()
        os.write(write_end, b"still open")           # not closed: it was the caller's
    finally:
        os.close(read_end)
        os.close(write_end)


def test_a_regular_file_is_written_in_place_at_its_offset(tmp_path):
    path = tmp_path / "console.txt"
    with open(path, "ab") as log:
        log.write(b"before\n")
        log.flush()
        output = ConsoleOutput(log.fileno())
        output.write(b"guest\n")
        output.close()
    assert path.read_bytes() == b"before\nguest\n"


def test_the_buffer_keeps_at_most_its_limit():
    output = BufferOutput(limit=10)
    output.write(b"0123456")
    output.write(b"789abc")
    assert bytes(output.data) == b"0123456789" and output.dropped == 3
