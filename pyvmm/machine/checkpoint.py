"""In-process checkpoints: Machine.checkpoint() keeps a machine's state in
memory, Machine.reset(checkpoint) puts it back, in the same VM.

A reset is a handful of ioctls plus the pages written since the checkpoint:

memory   the pages the guest wrote (KVM's dirty-page log, turned on by the
         first checkpoint; reading it clears it) and the pages the host
         wrote through GuestMemory (GuestMemory.written: the log cannot see
         those), and the rings devices write through views they keep (the
         virtio used rings) are copied back from the checkpoint's copy of
         RAM, which holds only the pages that were not zero;
devices  every device's restore_state, from states checked at the checkpoint;
VM       PIT and interrupt controllers; the vCPUs (their registers, special
         registers and events staged in kvm_run when the APIC base did not
         change, KVM takes them when the vCPU next enters: three ioctls
         fewer); the KVM clock last;
run      the stop signal is cleared, so a run that ended can go on, and a
         buffered console output ("buffer") is cut back to its length then.
"""

import mmap

from .snapshot import MachineState, capture

_NONZERO_TO_ONE = bytes([0] + [1] * 255)
PAGE = 4096


class GoldenRegion:
    """A copy of one region of guest RAM: its non-zero pages (the rest of the
    mapping stays untouched, so it costs nothing and reads as zero)."""

    def __init__(self, region):
        self.region = region
        self.mapping = mmap.mmap(-1, region.size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS
                                 | getattr(mmap, "MAP_NORESERVE", 0))
        self.mapping.madvise(mmap.MADV_DONTDUMP)
        self.view = memoryview(self.mapping)
        for offset, length in region.nonzero_runs():
            self.view[offset:offset + length] = region.view[offset:offset + length]

    def restore_bitmap(self, bitmap):
        """Copies back the pages a KVM dirty bitmap marks (bit n: page n), runs
        of pages in one copy each; returns how many pages."""
        marks = bitmap.translate(_NONZERO_TO_ONE)     # then memchr finds each dirty byte
        count, run_start, run_end = 0, None, None
        index = marks.find(1)
        while index >= 0:
            byte, page = bitmap[index], index * 8
            while byte:
                if byte & 1:
                    if page == run_end:
                        run_end += 1
                    else:
                        if run_start is not None:
                            count += self._copy(run_start, run_end)
                        run_start, run_end = page, page + 1
                byte >>= 1
                page += 1
            index = marks.find(1, index + 1)
        if run_start is not None:
            count += self._copy(run_start, run_end)
        return count

    def _copy(self, first, end):
        end = min(end, self.region.size // PAGE)
        self.region.view[first * PAGE:end * PAGE] = self.view[first * PAGE:end * PAGE]
        return end - first

    def restore_page(self, page):
        offset = page * PAGE
        self.region.view[offset:offset + PAGE] = self.view[offset:offset + PAGE]

    def close(self):
        self.view.release()
        self.mapping.close()


class Checkpoint:
    """A machine's state in memory (take it with Machine.checkpoint())."""

    def __init__(self, machine):
        self.machine = machine
        self.state = MachineState(machine, capture(machine))
        self.golden = []
        try:
            for region in machine.memory.regions:
                self.golden.append((machine.vm.slot_of(region.guest_addr), GoldenRegion(region)))
            machine.vm.log_dirty_pages(True)
            for slot, _ in self.golden:
                machine.vm.dirty_log(slot)          # from now on
        except BaseException:
            self.close()
            raise
        machine.memory.track_writes()
        data = getattr(machine.output, "data", None)
        self.output_length = None if data is None else len(data)
        self.pages_restored = 0                     # by the last reset, for benchmarks and tests

    def restore(self):
        machine = self.machine
        restored = 0
        for slot, golden in self.golden:
            restored += golden.restore_bitmap(machine.vm.dirty_log(slot))
        for addr, length in machine.devices.written_areas():
            machine.memory.mark_written(addr, length)
        written, machine.memory.written = machine.memory.written, set()
        for page in written:
            for _slot, golden in self.golden:
                offset = page * PAGE - golden.region.guest_addr
                if 0 <= offset < golden.region.size:
                    golden.restore_page(offset // PAGE)
                    restored += 1
                    break
        self.pages_restored = restored
        self.state.apply(machine, cpuid=False, stage=True)
        machine.stop.clear()
        data = getattr(machine.output, "data", None)
        if data is not None and self.output_length is not None:
            with machine.output.lock:
                del data[self.output_length:]

    def close(self):
        for _slot, golden in self.golden:
            golden.close()
        self.golden = []
