"""virtio-blk data integrity on a real VM: a guest sends generated requests, a model of the file judges.

Every result (status, used length, a hash of what was read) must be the
model's, the image file must end up byte for byte as the model says (a
read-only one exactly as it was), and what the guest saw flushed must be
in the file after the VMM is killed.
"""

import os
import signal
import subprocess
import sys
import textwrap

from hypothesis import given, strategies as st

from pyvmm.devices.virtio import blk
from pyvmm.testing import fuzz_settings
from pyvmm.testing.virtio_kvm import ANNOUNCE, BlockModel, BlockOp, block_programs, run_block_program

CAPACITY = 256


def check_run(ops, run, model):
    for index, (op, got) in enumerate(zip(ops, run.results)):
        status, used, digest = model.apply(op)
        assert got[:2] == (status, used), (index, op, got)
        if digest is not None:
            assert got[2] == digest, (index, op)


@fuzz_settings(max_examples=10)
@given(ops=block_programs(CAPACITY), extra=st.integers(0, 511), seed=st.binary(min_size=16, max_size=16),
       exit_path=st.sampled_from(["fast", "python"]))
def test_block_requests_match_a_model_of_the_file(tmp_path_factory, ops, extra, seed, exit_path):
    path = tmp_path_factory.mktemp("disk") / "disk.img"
    data = (seed * ((CAPACITY * 512 + extra) // 16 + 1))[:CAPACITY * 512 + extra]
    path.write_bytes(data)
    model = BlockModel(data, disk_id="disk0")
    run = run_block_program(ops, str(path), exit_path=exit_path)
    check_run(ops, run, model)
    assert path.read_bytes() == bytes(model.data)


@fuzz_settings(max_examples=5)
@given(ops=block_programs(CAPACITY, max_ops=12))
def test_a_read_only_disk_stays_byte_for_byte(tmp_path_factory, ops):
    path = tmp_path_factory.mktemp("disk") / "disk.img"
    data = os.urandom(CAPACITY * 512)
    path.write_bytes(data)
    mtime = os.stat(path).st_mtime_ns
    model = BlockModel(data, readonly=True, disk_id="ro")
    run = run_block_program(ops + [BlockOp(blk.T_OUT, 1, 0, 7)], str(path), readonly=True, disk_id="ro")
    check_run(ops + [BlockOp(blk.T_OUT, 1, 0, 7)], run, model)
    assert run.results[-1][0] == blk.S_IOERR
    assert path.read_bytes() == data and os.stat(path).st_mtime_ns == mtime


KILLED_VM = textwrap.dedent("""
    import sys
    from pyvmm.devices.virtio import blk
    from pyvmm.testing.virtio_kvm import ANNOUNCE, BlockOp, run_block_program
    ops = [BlockOp(blk.T_OUT, 8, 8 * n, seed=n + 1) for n in range(16)]
    ops += [BlockOp(blk.T_FLUSH), BlockOp(ANNOUNCE, seed=1)]
    run_block_program(ops, sys.argv[1], wait_at_end=True, timeout=60, serial="stdio")
""")


def test_flushed_writes_survive_a_killed_vmm(tmp_path):
    path = tmp_path / "disk.img"
    data = bytes(CAPACITY * 512)
    path.write_bytes(data)
    model = BlockModel(data)
    for n in range(16):
        model.apply(BlockOp(blk.T_OUT, 8, 8 * n, seed=n + 1))
    process = subprocess.Popen([sys.executable, "-c", KILLED_VM, str(path)], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE)
    try:
        output = b""
        while b"program done" not in output:        # printed once the flush completed
            line = process.stdout.readline()
            assert line, process.stderr.read()
            output += line
        assert b"mark 1" in output
        os.kill(process.pid, signal.SIGKILL)
        process.wait(10)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert path.read_bytes() == bytes(model.data)
    # The lock went with the process: the image opens for writing again.
    from pyvmm.devices.virtio.image import RawImage
    RawImage(str(path)).close()
