"""Guest memory: anonymous host mappings addressed by guest-physical address.

Every access is bounds-checked against the regions; nothing outside guest
RAM is ever read or written. Regions are registered as KVM memory slots by
Vm.add_memory.
"""

import bisect
import ctypes
import mmap
import os
import re
import struct

_MAP_FLAGS = mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | getattr(mmap, "MAP_NORESERVE", 0)
_U16, _U32, _U64 = struct.Struct("<H"), struct.Struct("<I"), struct.Struct("<Q")
PAGE_SIZE = 4096
_FILL_CHUNK = 1 << 20
_ZERO_PAGE = bytes(PAGE_SIZE)
# /proc/self/pagemap: one u64 per page; bit 63 present, bit 62 swapped (byte 7: 0x80, 0x40)
_PAGEMAP_IN_USE = re.compile(rb"[\x40-\xff]")
_PAGEMAP_CHUNK = 1 << 18           # pages per read (2 MiB of pagemap)


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
        anchor = ctypes.c_char.from_buffer(self._map)
        self.host_addr = ctypes.addressof(anchor)
        del anchor                      # releases the buffer export (close() needs none)
        # Opened now: a snapshot taken later, on a sandboxed thread, may open nothing.
        try:
            self._pagemap = os.open("/proc/self/pagemap", os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            self._pagemap = None

    @property
    def mapping(self):
        """The host mapping (an mmap) backing this region: what a KVM memory slot points at."""
        return self._map

    def host_address(self):
        """Where the mapping starts in this process (for /proc/self/smaps and the like)."""
        anchor = ctypes.c_char.from_buffer(self._map)
        try:
            return ctypes.addressof(anchor)
        finally:
            del anchor                      # the mapping must stay closable

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

    def touched_pages(self):
        """Page numbers that were ever written or read (the others are zero and
        cost nothing to skip), from /proc/self/pagemap; every page if it is unreadable."""
        pages, fd = self.size // PAGE_SIZE, self._pagemap
        if fd is None:
            return range(pages)
        try:
            found = []
            first = self.host_addr // PAGE_SIZE
            for start in range(0, pages, _PAGEMAP_CHUNK):
                count = min(_PAGEMAP_CHUNK, pages - start)
                entries = os.pread(fd, count * 8, (first + start) * 8)
                if len(entries) != count * 8:
                    return range(pages)
                found += [start + match.start() for match in _PAGEMAP_IN_USE.finditer(entries[7::8])]
            return found
        except OSError:
            return range(pages)

    def nonzero_runs(self):
        """[(offset, length)] of the runs of pages holding anything but zeros."""
        runs = []
        view = self.view
        for page in self.touched_pages():
            offset = page * PAGE_SIZE
            if view[offset:offset + PAGE_SIZE].tobytes() == _ZERO_PAGE:
                continue
            if runs and runs[-1][0] + runs[-1][1] == offset:
                runs[-1][1] += PAGE_SIZE
            else:
                runs.append([offset, PAGE_SIZE])
        return [tuple(run) for run in runs]

    def close(self):
        if self._map is None:
            return
        if self._pagemap is not None:
            os.close(self._pagemap)
            self._pagemap = None
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
        # Page numbers (guest address >> 12) the host wrote since track_writes(),
        # or None: what KVM's dirty-page log cannot see (it logs the guest's writes).
        self.written = None

    def track_writes(self):
        """From now on every write through this object (and every view handed
        out, written or not) adds its pages to `written`, which this empties."""
        self.written = set()

    def mark_written(self, addr, length):
        """Counts [addr, addr+length) as written by the host (while tracking):
        for what a device writes through a view it keeps."""
        if self.written is not None:
            self._mark(addr, length)

    def _mark(self, addr, length):
        if length > 0:
            self.written.update(range(addr >> 12, ((addr + length - 1) >> 12) + 1))

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
        if self.written is not None:
            self._mark(addr, length)
        return region.view[offset:offset + length]

    # --- bytes ---------------------------------------------------------------
    def read(self, addr, length):
        region, offset = self._locate(addr, length)
        return bytes(region.view[offset:offset + length])

    def write(self, addr, data):
        region, offset = self._locate(addr, len(data))
        region.view[offset:offset + len(data)] = data
        if self.written is not None:
            self._mark(addr, len(data))

    def fill(self, addr, length, byte=0):
        """Sets [addr, addr+length) to `byte` without allocating `length` bytes
        on the host; zeroing gives whole pages back (they read as zero again)."""
        region, offset = self._locate(addr, length)
        if self.written is not None:
            self._mark(addr, length)
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
        if self.written is not None:
            self._mark(addr, 1)

    def write_u16(self, addr, value):
        region, offset = self._locate(addr, 2)
        _U16.pack_into(region.view, offset, value & 0xFFFF)
        if self.written is not None:
            self._mark(addr, 2)

    def write_u32(self, addr, value):
        region, offset = self._locate(addr, 4)
        _U32.pack_into(region.view, offset, value & 0xFFFFFFFF)
        if self.written is not None:
            self._mark(addr, 4)

    def write_u64(self, addr, value):
        region, offset = self._locate(addr, 8)
        _U64.pack_into(region.view, offset, value & 0xFFFFFFFFFFFFFFFF)
        if self.written is not None:
            self._mark(addr, 8)

    # --- lifetime ------------------------------------------------------------
    def close(self):
        for region in self.regions:
            region.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
