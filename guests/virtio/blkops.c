/*
 * virtio-blkops.bin: runs a program of block requests the host wrote into
 * guest memory and records what each returned (pyvmm.testing.virtio_kvm
 * writes the program and reads the results; the layout is kept there too).
 *
 * Program at 0x1000000: u32 magic "BOPS", u32 count, u32 flags, u32 0,
 * then `count` operations of 32 bytes:
 *     u32 type      0 read, 1 write, 4 flush, 8 get-id, 11 discard,
 *                   13 write zeroes, 0x100 announce (prints "mark N")
 *     u32 sectors
 *     u64 sector
 *     u64 seed      write: the data is xorshift64* words from seed;
 *                   write zeroes: bit 0 is the unmap flag
 *     u32 group     consecutive operations with the same non-zero group
 *                   go to the device together, with one notification
 *     u32 0
 * Results at 0x1800000: u32 magic "BRES", u32 operations done, u32 0, u32 0,
 * then per operation u32 status, u32 used length, u64 hash (reads: FNV-1a
 * over the data's 64-bit words, as pyvmm.testing.virtio_kvm.word_hash).
 * Flags bit 0: after the last operation, print "program done" and wait
 * (halted with interrupts on) instead of exiting: a test kills the VMM then.
 * Exits with debug-exit 0 (status 1) when done; 0x7f on failure.
 */
#include "common.h"

#define PROGRAM 0x1000000ull
#define RESULTS 0x1800000ull
#define RING 0x400000ull
#define HEADERS 0x480000ull
#define STATUS 0x4c0000ull
#define DATA 0x2000000ull
#define DATA_SLOT 0x20000ull            /* 128 KiB per request in a group */
#define MAX_GROUP 16
#define MAX_SECTORS 256
#define QSIZE 128
#define MAGIC_PROGRAM 0x53504f42u       /* "BOPS" */
#define MAGIC_RESULTS 0x53455242u       /* "BRES" */
#define ANNOUNCE 0x100
#define WAIT_AT_END 1

struct op {
	uint32_t type, sectors;
	uint64_t sector, seed;
	uint32_t group, reserved;
};

struct result {
	uint32_t status, used;
	uint64_t hash;
};

static struct vio_dev dev;
static struct vq vq;
static int slot_of[QSIZE];

static uint64_t word_hash(const uint64_t *words, uint32_t count)
{
	uint64_t h = 0xcbf29ce484222325ull;

	for (uint32_t i = 0; i < count; i++) {
		h ^= words[i];
		h *= 0x100000001b3ull;
	}
	return h;
}

static void fill(uint64_t *words, uint32_t count, uint64_t seed)
{
	random_seed(seed);
	for (uint32_t i = 0; i < count; i++)
		words[i] = random_next();
}

static int submit(int slot, const struct op *op)
{
	uint32_t *header = (uint32_t *)(uintptr_t)(HEADERS + 64ull * slot);
	uint64_t data = DATA + DATA_SLOT * (uint64_t)slot;
	uint32_t type = op->type, bytes = op->sectors * 512;
	struct buf bufs[3];
	int count = 0;

	header[0] = type;
	header[1] = 0;
	*(uint64_t *)&header[2] = op->sector;
	bufs[count++] = (struct buf){HEADERS + 64ull * slot, 16, 0};
	if (type == 0) {
		bufs[count++] = (struct buf){data, bytes, 1};
	} else if (type == 1) {
		fill((uint64_t *)(uintptr_t)data, bytes / 8, op->seed);
		bufs[count++] = (struct buf){data, bytes, 0};
	} else if (type == 8) {
		memset((void *)(uintptr_t)data, 0, 24);
		bufs[count++] = (struct buf){data, 20, 1};
	} else if (type == 11 || type == 13) {
		uint32_t *segment = (uint32_t *)(uintptr_t)data;
		*(uint64_t *)segment = op->sector;
		segment[2] = op->sectors;
		segment[3] = (uint32_t)(op->seed & 1);
		bufs[count++] = (struct buf){data, 16, 0};
	}
	*(volatile uint8_t *)(uintptr_t)(STATUS + (uint64_t)slot) = 0xee;
	bufs[count++] = (struct buf){STATUS + (uint64_t)slot, 1, 1};
	int head = vq_add(&vq, bufs, count);
	if (head < 0)
		fail("no descriptors");
	return head;
}

void guest_main(uint32_t multiboot_info);

void guest_main(uint32_t multiboot_info)
{
	const uint32_t *program = (const uint32_t *)(uintptr_t)PROGRAM;
	const struct op *ops = (const struct op *)(uintptr_t)(PROGRAM + 16);
	uint32_t *results_header = (uint32_t *)(uintptr_t)RESULTS;
	struct result *results = (struct result *)(uintptr_t)(RESULTS + 16);
	uint32_t count = program[1];

	guest_start(multiboot_info);
	if (program[0] != MAGIC_PROGRAM)
		fail("no program");
	if (!acpi_scan(&acpi))
		fail("no ACPI");
	find_device(&dev, 2, 0);
	if (!vio_negotiate(&dev, F_VERSION_1 | F_INDIRECT | (1ull << 9) | (1ull << 13) | (1ull << 14)))
		fail("FEATURES_OK refused");
	if (!vq_init(&vq, &dev, 0, QSIZE, RING))
		fail("queue not ready");
	vio_driver_ok(&dev);
	__asm__ volatile("sti");
	results_header[0] = MAGIC_RESULTS;
	results_header[1] = 0;

	for (uint32_t i = 0; i < count;) {
		if (ops[i].type == ANNOUNCE) {
			print("mark %u\n", (unsigned)ops[i].seed);
			results[i] = (struct result){0, 0, 0};
			results_header[1] = ++i;
			continue;
		}
		uint32_t n = 1;
		while (ops[i].group && i + n < count && n < MAX_GROUP && ops[i + n].group == ops[i].group)
			n++;
		for (uint32_t k = 0; k < n; k++) {
			if (ops[i + k].sectors > MAX_SECTORS)
				fail("operation %u: too many sectors", i + k);
			slot_of[submit((int)k, &ops[i + k])] = (int)k;
		}
		vq_kick(&vq);
		for (uint32_t k = 0; k < n; k++) {
			uint32_t length;
			if (!vq_wait_used(&vq, WAIT_US * 5))
				fail("operation %u not used", i + k);
			int head = vq_used(&vq, &length);
			if (head < 0 || head >= QSIZE)
				fail("used head %d", head);
			uint32_t slot = (uint32_t)slot_of[head];
			const struct op *op = &ops[i + slot];
			struct result *r = &results[i + slot];
			r->status = *(volatile uint8_t *)(uintptr_t)(STATUS + (uint64_t)slot);
			r->used = length;
			r->hash = op->type == 0 || op->type == 8
				? word_hash((const uint64_t *)(uintptr_t)(DATA + DATA_SLOT * slot),
					    op->type == 0 ? op->sectors * 64 : 3)
				: 0;
		}
		i += n;
		results_header[1] = i;
	}
	if (program[2] & WAIT_AT_END) {
		print("program done\n");
		for (;;)
			__asm__ volatile("sti; hlt");
	}
	exit_guest(0);
}
