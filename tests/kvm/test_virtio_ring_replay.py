"""Hostile rings on a real VM: the same outcome as without KVM, and the VM survives.

Generated descriptor tables (pyvmm.testing.virtio.hostile_chains) go into a
queue of a guest's entropy or block device; the guest
(virtio-ringreplay.bin) sets the queue up and rings through real MMIO exits
and doorbells, the device's worker does the rest. The used ring, the
DEVICE_NEEDS_RESET bit and the configuration interrupt must be what the
same chains give through VirtioBench (pure Python, no KVM), and the run
must end normally: no crash, no hang, no device failure.
"""

from hypothesis import given, strategies as st

from pyvmm.devices.virtio import spec
from pyvmm.devices.virtio.blk import VirtioBlock
from pyvmm.devices.virtio.image import RawImage
from pyvmm.devices.virtio.rng import EntropySource, VirtioRng
from pyvmm.testing import fuzz_settings
from pyvmm.testing.virtio import VirtioBench, hostile_chains
from pyvmm.testing.virtio_kvm import MEMORY, replay_rings_on_kvm

SIZE = 16
BASE = 0x300000              # the guest's code and data stay below (floor)
DATA = 0x400000


def bench_outcome(device, chains, features):
    with VirtioBench(device, memory_size=MEMORY) as bench:
        queue = bench.driver.start([SIZE], base=BASE, features=features)[0]
        for chain in chains:
            chain.install(queue)
        queue.kick()
        bench.run()
        assert bench.failures == []
        return queue.take_used(), bench.driver.status


@fuzz_settings(max_examples=12)
@given(device=st.sampled_from(["rng", "blk"]),
       chains=st.lists(hostile_chains(SIZE, MEMORY, DATA, floor=BASE), min_size=1, max_size=4),
       event_idx=st.booleans(), exit_path=st.sampled_from(["fast", "python"]))
def test_hostile_rings_do_on_kvm_what_they_do_in_the_bench(tmp_path_factory, device, chains, event_idx,
                                                           exit_path):
    directory = tmp_path_factory.mktemp("replay")
    entropy = directory / "entropy"
    entropy.write_bytes(bytes(range(256)) * 64)
    for name in ("bench.img", "kvm.img"):
        (directory / name).write_bytes(bytes(range(256)) * 512)
    features = 1 << spec.F_VERSION_1 | 1 << spec.F_RING_INDIRECT_DESC
    if event_idx:
        features |= 1 << spec.F_RING_EVENT_IDX
    if device == "rng":
        model = VirtioRng(EntropySource(str(entropy)))
        kvm = replay_rings_on_kvm(chains, "rng", SIZE, BASE, features, entropy=str(entropy),
                                  exit_path=exit_path)
    else:
        model = VirtioBlock(RawImage(str(directory / "bench.img")), "disk0")
        kvm = replay_rings_on_kvm(chains, "blk", SIZE, BASE, features, image=str(directory / "kvm.img"),
                                  exit_path=exit_path)
    used, status = bench_outcome(model, chains, features)
    assert kvm.features_accepted
    assert kvm.used == used
    assert kvm.status == status
    needs_reset = bool(status & spec.DEVICE_NEEDS_RESET)
    assert bool(kvm.interrupt_bits & spec.INT_CONFIG_CHANGE) == needs_reset
    if device == "blk":
        assert (directory / "kvm.img").read_bytes() == (directory / "bench.img").read_bytes()
