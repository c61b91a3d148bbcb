/*
 * virtio-blkbench.bin: block throughput from a lean driver, for bench/virtio_blk.
 *
 * Command line: mode=read|write|randread size=BYTES depth=N count=N (all
 * but mode numbers). Keeps `depth` requests of `size` bytes in flight
 * until `count` are done: sequential (read, write) or random (randread)
 * sectors over the disk. Each slot has its three descriptors built once;
 * a request then costs a header write, an available entry and, when the
 * device asks for it (event indices), a notification; completions come by
 * interrupt (used_event). Prints
 *     bench requests N bytes B us T interrupts I notifies K
 * measured with the TSC around the loop, then exits with status 1.
 */
#include "common.h"

#define RING 0x400000ull
#define HEADERS 0x480000ull
#define STATUS 0x4c0000ull
#define DATA 0x1000000ull                       /* depth x size, up to 16 x 1 MiB */
#define QSIZE 64
#define MAX_DEPTH 16

static struct vio_dev dev;
static struct vq vq;

struct header {
	uint32_t type, reserved;
	uint64_t sector;
};

static uint64_t capacity, sectors_per_request, next_sector;
static int random_order;

static uint64_t pick_sector(void)
{
	uint64_t slots = capacity / sectors_per_request;

	if (random_order)
		return (random_next() % slots) * sectors_per_request;
	uint64_t sector = next_sector;
	next_sector = (next_sector + sectors_per_request) % (slots * sectors_per_request);
	return sector;
}

static void prepare(int slot)
{
	volatile struct header *header = (volatile struct header *)(uintptr_t)(HEADERS + 64ull * slot);

	header->sector = pick_sector();
	vq.avail[2 + vq.avail_idx % QSIZE] = (uint16_t)(3 * slot);
	vq.avail_idx++;
}

static int need_event(uint16_t event, uint16_t new_idx, uint16_t old_idx)
{
	return (uint16_t)(new_idx - event - 1) < (uint16_t)(new_idx - old_idx);
}

void guest_main(uint32_t multiboot_info);

void guest_main(uint32_t multiboot_info)
{
	guest_start(multiboot_info);
	const char *mode = cmdline_value("mode");
	int write = mode && !strncmp(mode, "write", 6);
	random_order = mode && !strncmp(mode, "randread", 9);
	uint32_t size = (uint32_t)cmdline_number("size", 65536);
	int depth = (int)cmdline_number("depth", 1);
	uint32_t count = (uint32_t)cmdline_number("count", 256);
	if (depth < 1 || depth > MAX_DEPTH || size % 512 || size > (1u << 20) || !size)
		fail("bad parameters");
	if (!acpi_scan(&acpi))
		fail("no ACPI");
	find_device(&dev, 2, 0);
	if (!vio_negotiate(&dev, F_VERSION_1 | F_EVENT_IDX))
		fail("FEATURES_OK refused");
	if (!(dev.features & F_EVENT_IDX))
		fail("no EVENT_IDX");
	if (!vq_init(&vq, &dev, 0, QSIZE, RING))
		fail("queue not ready");
	vio_driver_ok(&dev);
	capacity = mmio_read64(dev.base + REG_CONFIG);
	sectors_per_request = size / 512;
	if (capacity < sectors_per_request)
		fail("disk too small");

	for (int slot = 0; slot < depth; slot++) {
		struct header *header = (struct header *)(uintptr_t)(HEADERS + 64ull * slot);
		header->type = write ? 1 : 0;
		header->reserved = 0;
		vq.desc[3 * slot] = (struct vring_desc){HEADERS + 64ull * slot, 16, DESC_NEXT, (uint16_t)(3 * slot + 1)};
		vq.desc[3 * slot + 1] = (struct vring_desc){DATA + (uint64_t)size * slot, size,
							    (uint16_t)(DESC_NEXT | (write ? 0 : DESC_WRITE)),
							    (uint16_t)(3 * slot + 2)};
		vq.desc[3 * slot + 2] = (struct vring_desc){STATUS + (uint64_t)slot, 1, DESC_WRITE, 0};
	}
	memset((void *)(uintptr_t)DATA, 0x5a, (size_t)size * depth);
	tsc_per_us();
	__asm__ volatile("sti");

	uint32_t submitted = 0, completed = 0, notifies = 0, irqs = dev.irq_count;
	uint64_t waiting = 0, halts = 0;         /* TSC ticks spent waiting for completions */
	uint64_t start = rdtsc();
	uint16_t published = vq.avail_idx;
	for (int slot = 0; slot < depth && submitted < count; slot++, submitted++)
		prepare(slot);
	while (completed < count) {
		if (vq.avail_idx != published) {
			mb();
			vq.avail[1] = vq.avail_idx;
			mb();
			if (need_event(vq_avail_event(&vq), vq.avail_idx, published)) {
				vio_write(&dev, REG_QUEUE_NOTIFY, 0);
				notifies++;
			}
			published = vq.avail_idx;
		}
		/* Wait for a completion: ask for an interrupt at the next one. */
		vq_set_used_event(&vq, vq.last_used);
		mb();
		uint64_t before = rdtsc();
		__asm__ volatile("cli");
		while (vq.last_used == vq_used_idx(&vq)) {
			__asm__ volatile("sti; hlt; cli" ::: "memory");
			halts++;
		}
		__asm__ volatile("sti");
		waiting += rdtsc() - before;
		while (vq.last_used != vq_used_idx(&vq)) {
			volatile uint32_t *element = (volatile uint32_t *)(vq.used + 2) + 2 * (vq.last_used % QSIZE);
			int slot = (int)(element[0] / 3);
			vq.last_used++;
			if (*(volatile uint8_t *)(uintptr_t)(STATUS + (uint64_t)slot) != 0)
				fail("request failed");
			completed++;
			if (submitted < count) {
				prepare(slot);
				submitted++;
			}
		}
	}
	uint64_t elapsed = (rdtsc() - start) / tsc_per_us();
	print("bench requests %u bytes %lu us %lu interrupts %u notifies %u\n", count, (uint64_t)count * size,
	      elapsed, dev.irq_count - irqs, notifies);
	print("~ waiting %lu us in %lu halts\n", waiting / tsc_per_us(), halts);
	exit_guest(0);
}
