"""Where pyvmm puts its boot structures in guest-physical memory.

Everything lives in the first 64 KiB, below where any loader places a
kernel (real-mode binaries default to 0x7c00 and must stay clear of it).
"""

BOOT_GDT = 0x0500             # 8 descriptors
BOOT_IDT = 0x0540             # empty IDT: limit 0
PML4 = 0x1000                 # identity map of the first 4 GiB:
PDPT = 0x2000                 #   PML4 -> PDPT -> 4 page directories of
PAGE_DIRECTORIES = 0x3000     #   2 MiB pages at 0x3000..0x6fff
BOOT_STACK_TOP = 0x8FF0       # initial stack pointer in every mode (stack at 0x8000..0x8fff)

REAL_MODE_LOAD = 0x7C00       # default load address of a real-mode binary
HIGH_MEMORY = 0x100000        # default load address of a 32/64-bit binary

ZERO_PAGE = 0x7000            # Linux boot_params ("zero page"), 4 KiB
BOOT_INFO = 0x9000            # multiboot info / PVH hvm_start_info and their tables, 16 KiB
BOOT_INFO_SIZE = 0x4000
CMDLINE = 0x20000             # kernel command line, NUL-terminated
CMDLINE_MAX = 0x10000
EBDA_START = 0x9FC00          # e820: [EBDA_START, 1 MiB) is not RAM
BIOS_AREA = 0xE0000           # firmware tables live in [0xE0000, 0x100000)
BIOS_AREA_END = 0x100000
# Both where every scanner looks: the BIOS ROM area [0xF0000, 0x100000)
# (kvm-unit-tests scans only there for the RSDP; Linux scans it for "_MP_").
ACPI_TABLES = 0xF0000         # RSDP first; 10 KiB for 254 vCPUs
MPTABLE = 0xF8000             # MP floating pointer + table; 5.3 KiB for 254 vCPUs

# Structures the loader must not overwrite when it places a kernel
# (GDT, IDT, page tables; the zero page, stack and boot info are placed
# after the kernel and are checked separately).
RESERVED_LOW = (0x0000, 0x7000)

IDENTITY_MAPPED = 4 << 30     # the page tables map [0, 4 GiB)

MIN_MEMORY = 1 << 20          # below this the boot structures do not fit

MMIO_HOLE_START = 0xC0000000  # [3 GiB, 4 GiB) is left for device MMIO
FOUR_GIB = 1 << 32


def ram_ranges(size):
    """[(guest address, size)] of guest RAM for `size` bytes of memory."""
    if size <= MMIO_HOLE_START:
        return [(0, size)]
    return [(0, MMIO_HOLE_START), (FOUR_GIB, size - MMIO_HOLE_START)]

# virtio-mmio transports, where QEMU's microvm machine puts them: 24 slots of
# 0x200 bytes from 0xfeb00000, filled from the top (the first device at
# 0xfeb02e00). Slot n interrupts on IOAPIC pin n, for the top 8 slots
# (16-23, the pins no ISA device uses); QEMU's microvm wires slot n to pin
# 24 + n of a second IOAPIC, which KVM's in-kernel irqchip does not have.
VIRTIO_MMIO_BASE = 0xFEB00000
VIRTIO_MMIO_SLOT_SIZE = 0x200
VIRTIO_MMIO_SLOTS = 24
VIRTIO_FIRST_IRQ_SLOT = 16


def virtio_slot(slot):
    """(MMIO base, IRQ) of virtio-mmio slot `slot`; IRQ None for slots without one."""
    if not 0 <= slot < VIRTIO_MMIO_SLOTS:
        raise ValueError(f"virtio-mmio slot {slot} (0-{VIRTIO_MMIO_SLOTS - 1})")
    irq = slot if slot >= VIRTIO_FIRST_IRQ_SLOT else None
    return VIRTIO_MMIO_BASE + slot * VIRTIO_MMIO_SLOT_SIZE, irq
