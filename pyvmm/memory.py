"""Guest memory: anonymous host mappings addressed by guest-physical address.

Every access is bounds-checked against the regions; nothing outside guest
RAM is ever read or written. Regions are registered as KVM memory slots by
Vm.add_memory.
"""

import bisect
import mmap
import struct

_MAP_FLAGS = mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | getattr(mmap, "MAP_NORESERVE", 0)
_U16, _U32, _U64 = struct.Struct("<H"), struct.Struct("<I"), struct.Struct("<Q")
PAGE_SIZE = 4096
_FILL_CHUNK = 1 << 20


class GuestMemoryError(ValueError):
    """A guest-physical access outside guest RAM, or RAM that cannot be mapped."""


class MemoryRegion:
    """One contiguous range of guest RAM backed by one anonymous mapping."""

    def __init__(self, guest_addr, size):
        if size <= 0 or size % PAGE_SIZE or guest_addr % PAGE_SIZE:
            raise GuestMemoryError(f"region at {guest_addr:#x} of {size:#x} bytes is not page-aligned")
        try:
            self._map = mmap.mmap(-1, size, flags=_MAP_FLAGS)
        except (OSError, OverflowError) as error:
            raise GuestMemoryError(f"cannot map {size} bytes of guest memory: {error}") from None
        # Guest RAM stays out of the VMM's core dumps, as QEMU's dump-guest-core=off.
        self._map.madvise(mmap.MADV_DONTDUMP)
        self.guest_addr = guest_addr
        self.size = size
        self.end = guest_addr + size
        self.view = memoryview(self._map)

    @property
    def mapping(self):
        """The host mapping (an mmap) backing this region: what a KVM memory slot points at."""
        return self._map

    def zero(self, offset, length):
        """Zeroes [offset, offset+length): whole pages are dropped with
        MADV_DONTNEED (an anonymous private page then reads as zero and costs
        no host memory until written), the partial pages at the ends written."""
        end = offset + length
        first_page = -(-offset // PAGE_SIZE) * PAGE_SIZE
        last_page = end // PAGE_SIZE * PAGE_SIZE
        if last_page <= first_page:
            self.view[offset:end] = bytes(length)
            return
        self.view[offset:first_page] = bytes(first_page - offset)
        self._map.madvise(mmap.MADV_DONTNEED, first_page, last_page - first_page)
        self.view[last_page:end] = bytes(end - last_page)

    def close(self):
        if self._map is None:
            return
        self.view.release()
        try:
            self._map.close()
        except BufferError:
            # A caller still holds a view: the mapping goes when the view does.
            pass
        self._map = None


class GuestMemory:
    """Guest RAM as a set of non-overlapping regions.

    `GuestMemory([(guest_addr, size), ...])` maps each region. Reads and
    writes take guest-physical addresses; an access must fall entirely
    inside one region, or GuestMemoryError is raised.
    """

    def __init__(self, ranges):
        self.regions = []
        try:
            for guest_addr, size in sorted(ranges):
                if self.regions and guest_addr < self.regions[-1].end:
                    raise GuestMemoryError(f"region at {guest_addr:#x} overlaps another")
                self.regions.append(MemoryRegion(guest_addr, size))
        except BaseException:
            self.close()
            raise
        self._starts = [region.guest_addr for region in self.regions]
        self.size = sum(region.size for region in self.regions)

    # --- address checks ----------------------------------------------------
    def _locate(self, addr, length):
        """(region, offset) for [addr, addr+length), or GuestMemoryError."""
        index = bisect.bisect_right(self._starts, addr) - 1
        if index >= 0 and length >= 0:
            region = self.regions[index]
            if addr + length <= region.end:
                return region, addr - region.guest_addr
        raise GuestMemoryError(f"guest access at {addr:#x} of {length} bytes is outside guest RAM")

    def contains(self, addr, length=1):
        try:
            self._locate(addr, length)
        except GuestMemoryError:
            return False
        return True

    def view(self, addr, length):
        """A zero-copy, writable memoryview of [addr, addr+length)."""
        region, offset = self._locate(addr, length)
        return region.view[offset:offset + length]

    # --- bytes ---------------------------------------------------------------
    def read(self, addr, length):
        region, offset = self._locate(addr, length)
        return bytes(region.view[offset:offset + length])

    def write(self, addr, data):
        region, offset = self._locate(addr, len(data))
        region.view[offset:offset + len(data)] = data

    def fill(self, addr, length, byte=0):
        """Sets [addr, addr+length) to `byte` without allocating `length` bytes
        on the host; zeroing gives whole pages back (they read as zero again)."""
        region, offset = self._locate(addr, length)
        if byte == 0:
            region.zero(offset, length)
            return
        pattern = bytes([byte]) * min(length, _FILL_CHUNK)
        for start in range(offset, offset + length, _FILL_CHUNK):
            end = min(start + _FILL_CHUNK, offset + length)
            region.view[start:end] = pattern[:end - start]

    # --- little-endian integers ---------------------------------------------
    def read_u8(self, addr):
        region, offset = self._locate(addr, 1)
        return region.view[offset]

    def read_u16(self, addr):
        region, offset = self._locate(addr, 2)
        return _U16.unpack_from(region.view, offset)[0]

    def read_u32(self, addr):
        region, offset = self._locate(addr, 4)
        return _U32.unpack_from(region.view, offset)[0]

    def read_u64(self, addr):
        region, offset = self._locate(addr, 8)
        return _U64.unpack_from(region.view, offset)[0]

    def write_u8(self, addr, value):
        region, offset = self._locate(addr, 1)
        region.view[offset] = value & 0xFF

    def write_u16(self, addr, value):
        region, offset = self._locate(addr, 2)
        _U16.pack_into(region.view, offset, value & 0xFFFF)

    def write_u32(self, addr, value):
        region, offset = self._locate(addr, 4)
        _U32.pack_into(region.view, offset, value & 0xFFFFFFFF)

    def write_u64(self, addr, value):
        region, offset = self._locate(addr, 8)
        _U64.pack_into(region.view, offset, value & 0xFFFFFFFFFFFFFFFF)

    # --- lifetime ------------------------------------------------------------
    def close(self):
        for region in self.regions:
            region.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
