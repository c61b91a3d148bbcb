/*
 * virtio-blk.bin: drives a virtio block device on the test image.
 *
 * The test image (tests/differential/test_virtio_vs_qemu.py makes it) holds
 * byte (sector * 7 + offset) & 0xff at every offset of every sector. The
 * guest reads the configuration and the disk's id, reads and checks
 * sectors, writes and reads back, flushes, discards, writes zeroes, sends
 * requests out of range, of odd sizes and of unknown types, keeps 16
 * requests in flight, lays a request out in every way the specification
 * allows (header and data in one buffer, an indirect table), breaks the
 * request format (no status byte, a short header), and resets. With ro=1 on
 * the command line it expects a read-only disk and checks that nothing can
 * be written. Lines with "~ " are QEMU's or pyvmm's own (limits).
 */
#include "common.h"

#define RING 0x400000ull
#define HEADERS 0x480000ull
#define DATA 0x500000ull                 /* 16 x 64 KiB */
#define STATUS 0x4c0000ull
#define TABLE 0x4d0000ull
#define SECTOR 512
#define QSIZE 64

#define T_IN 0
#define T_OUT 1
#define T_FLUSH 4
#define T_GET_ID 8
#define T_DISCARD 11
#define T_WRITE_ZEROES 13

#define F_SEG_MAX (1ull << 2)
#define F_RO (1ull << 5)
#define F_BLK_SIZE (1ull << 6)
#define F_FLUSH (1ull << 9)
#define F_DISCARD (1ull << 13)
#define F_WRITE_ZEROES (1ull << 14)
#define OUR_BITS (F_SEG_MAX | F_RO | F_BLK_SIZE | F_FLUSH | F_DISCARD | F_WRITE_ZEROES)

struct header {
	uint32_t type, reserved;
	uint64_t sector;
};

struct segment {
	uint64_t sector;
	uint32_t sectors, flags;
};

static struct vio_dev dev;
static struct vq vq;
static int readonly;

static uint8_t expected_byte(uint64_t sector, uint32_t offset)
{
	return (uint8_t)(sector * 7 + offset);
}

static struct header *header_at(int slot) { return (struct header *)(uintptr_t)(HEADERS + 64ull * slot); }
static volatile uint8_t *status_at(int slot) { return (volatile uint8_t *)(uintptr_t)(STATUS + slot); }
static uint8_t *data_at(int slot) { return (uint8_t *)(uintptr_t)(DATA + 0x10000ull * slot); }

/* Builds request `slot` (header, `length` data bytes, status) without kicking. */
static int submit(int slot, uint32_t type, uint64_t sector, uint32_t length)
{
	struct buf bufs[3];
	int count = 0;

	*header_at(slot) = (struct header){type, 0, sector};
	*status_at(slot) = 0xee;
	bufs[count++] = (struct buf){HEADERS + 64ull * slot, 16, 0};
	if (length)
		bufs[count++] = (struct buf){DATA + 0x10000ull * slot, length, type == T_IN || type == T_GET_ID};
	bufs[count++] = (struct buf){STATUS + (uint64_t)slot, 1, 1};
	return vq_add(&vq, bufs, count);
}

static int wait_one(uint32_t *length)
{
	if (!vq_wait_used(&vq, WAIT_US))
		fail("request not used");
	return vq_used(&vq, length);
}

static int request(uint32_t type, uint64_t sector, uint32_t length, uint32_t *used_length)
{
	uint32_t ignored;

	if (submit(0, type, sector, length) < 0)
		fail("no descriptors");
	vq_kick(&vq);
	wait_one(used_length ? used_length : &ignored);
	return *status_at(0);
}

static int check_pattern(const uint8_t *data, uint64_t sector, uint32_t length)
{
	for (uint32_t i = 0; i < length; i++)
		if (data[i] != expected_byte(sector + i / SECTOR, i % SECTOR))
			return 0;
	return 1;
}

static int all_bytes(const uint8_t *data, uint32_t length, uint8_t value)
{
	for (uint32_t i = 0; i < length; i++)
		if (data[i] != value)
			return 0;
	return 1;
}

static int ranges(uint32_t type, uint64_t sector, uint32_t sectors, uint32_t flags)
{
	struct segment *segment = (struct segment *)(uintptr_t)data_at(0);

	*segment = (struct segment){sector, sectors, flags};
	*header_at(0) = (struct header){type, 0, 0};
	*status_at(0) = 0xee;
	struct buf bufs[] = {{HEADERS, 16, 0}, {DATA, sizeof(*segment), 0}, {STATUS, 1, 1}};
	vq_add(&vq, bufs, 3);
	vq_kick(&vq);
	uint32_t length;
	wait_one(&length);
	return *status_at(0);
}

static void setup(void)
{
	uint64_t wanted = F_VERSION_1 | F_INDIRECT | F_EVENT_IDX | OUR_BITS;

	if (!vio_negotiate(&dev, wanted))
		fail("FEATURES_OK refused");
	if (!vq_init(&vq, &dev, 0, QSIZE, RING))
		fail("queue not ready");
	vio_driver_ok(&dev);
}

static void configuration(void)
{
	uintptr_t config = dev.base + REG_CONFIG;

	print("capacity %lu sectors, blk_size %u, seg_max %u\n", mmio_read64(config),
	      mmio_read32(config + 20), mmio_read32(config + 12));
	print("~ discard max %u sectors %u segments, alignment %u; write zeroes max %u sectors %u "
	      "segments, may unmap %u\n", mmio_read32(config + 36), mmio_read32(config + 40),
	      mmio_read32(config + 44), mmio_read32(config + 48), mmio_read32(config + 52),
	      mmio_read8(config + 56));
	print("configuration generation %u\n", vio_read(&dev, REG_CONFIG_GENERATION));
}

static void reads_and_writes(void)
{
	uint32_t length;
	int status;

	memset(data_at(0), 0, 64);
	status = request(T_GET_ID, 0, 20, &length);
	print("get_id: status %d used %u id \"%s\"\n", status, length, (const char *)data_at(0));

	status = request(T_IN, 0, 4096, &length);
	print("read sectors 0-7: status %d used %u pattern %s\n", status, length,
	      check_pattern(data_at(0), 0, 4096) ? "ok" : "WRONG");
	status = request(T_IN, 1000, SECTOR, &length);
	print("read sector 1000: status %d pattern %s\n", status, check_pattern(data_at(0), 1000, SECTOR) ? "ok" : "WRONG");

	for (uint32_t i = 0; i < 2 * SECTOR; i++)
		data_at(0)[i] = (uint8_t)(0xa5 ^ i);
	status = request(T_OUT, 10, 2 * SECTOR, &length);
	print("write sectors 10-11: status %d used %u\n", status, length);
	memset(data_at(0), 0, 2 * SECTOR);
	status = request(T_IN, 10, 2 * SECTOR, NULL);
	int same = 1;
	for (uint32_t i = 0; i < 2 * SECTOR; i++)
		same &= data_at(0)[i] == (uint8_t)(0xa5 ^ i);
	print("read back sectors 10-11: status %d %s\n", status,
	      readonly ? (check_pattern(data_at(0), 10, 2 * SECTOR) ? "unchanged" : "CHANGED")
		       : (same ? "as written" : "WRONG"));
	print("flush: status %d\n", request(T_FLUSH, 0, 0, NULL));

	uint64_t capacity = mmio_read64(dev.base + REG_CONFIG);
	print("read the last sector: status %d\n", request(T_IN, capacity - 1, SECTOR, NULL));
	print("read past the end: status %d\n", request(T_IN, capacity - 1, 2 * SECTOR, NULL));
	print("write past the end: status %d\n", request(T_OUT, capacity, SECTOR, NULL));
	print("read of 100 bytes: status %d\n", request(T_IN, 0, 100, NULL));
	print("request type 99: status %d\n", request(99, 0, SECTOR, NULL));
}

static void discard_and_zeroes(void)
{
	print("discard sectors 20-21: status %d\n", ranges(T_DISCARD, 20, 2, 0));
	request(T_IN, 20, 2 * SECTOR, NULL);
	print("~ read after discard: %s\n", all_bytes(data_at(0), 2 * SECTOR, 0) ? "zeroes"
		: check_pattern(data_at(0), 20, 2 * SECTOR) ? "data" : "other");
	print("write zeroes sectors 30-31: status %d\n", ranges(T_WRITE_ZEROES, 30, 2, 0));
	request(T_IN, 30, 2 * SECTOR, NULL);
	print("read after write zeroes: %s\n", all_bytes(data_at(0), 2 * SECTOR, 0) ? "zeroes"
		: check_pattern(data_at(0), 30, 2 * SECTOR) ? "data" : "other");
	print("write zeroes with unmap, sectors 40-41: status %d\n", ranges(T_WRITE_ZEROES, 40, 2, 1));
	request(T_IN, 40, 2 * SECTOR, NULL);
	print("read after it: %s\n", all_bytes(data_at(0), 2 * SECTOR, 0) ? "zeroes"
		: check_pattern(data_at(0), 40, 2 * SECTOR) ? "data" : "other");
	print("discard with unmap: status %d\n", ranges(T_DISCARD, 50, 1, 1));
	print("write zeroes with unknown flags: status %d\n", ranges(T_WRITE_ZEROES, 50, 1, 6));
	uint64_t capacity = mmio_read64(dev.base + REG_CONFIG);
	print("discard past the end: status %d\n", ranges(T_DISCARD, capacity, 1, 0));
}

static void in_flight(void)
{
	uint32_t irqs = dev.irq_count, length;
	int good = 0, done = 0;

	for (int slot = 0; slot < 16; slot++)
		memset(data_at(slot), 0, 4096);
	for (int slot = 0; slot < 16; slot++)
		if (submit(slot, T_IN, 100ull + 37 * slot, 4096) < 0)
			fail("no descriptors for request %d", slot);
	vq_kick(&vq);
	while (done < 16) {
		wait_one(&length);
		done++;
	}
	for (int slot = 0; slot < 16; slot++)
		good += *status_at(slot) == 0 && check_pattern(data_at(slot), 100ull + 37 * slot, 4096);
	wait_irq_after(&dev, irqs, WAIT_US);
	print("16 reads in flight: %d right\n", good);
	print("~ 16 reads in flight: %u interrupts\n", dev.irq_count - irqs);
}

static void layouts(void)
{
	uint32_t length;

	/* Header and the first data bytes in one buffer, the rest and the status in another. */
	uint8_t *both = (uint8_t *)(uintptr_t)HEADERS;
	*(struct header *)both = (struct header){T_IN, 0, 3};
	memset(data_at(0), 0, 1024);
	struct buf one[] = {{HEADERS, 16, 0}, {DATA, SECTOR, 1}, {DATA + SECTOR, 1, 1}};
	vq_add(&vq, one, 3);
	vq_kick(&vq);
	wait_one(&length);
	print("status in the same buffer as data: status %d pattern %s\n", data_at(0)[SECTOR],
	      check_pattern(data_at(0), 3, SECTOR) ? "ok" : "WRONG");

	*header_at(0) = (struct header){T_IN, 0, 4};
	struct buf split[] = {{HEADERS, 8, 0}, {HEADERS + 8, 8, 0}, {DATA, 100, 1}, {DATA + 100, 412, 1},
			      {STATUS, 1, 1}};
	vq_add_indirect(&vq, split, 5, TABLE);
	vq_kick(&vq);
	wait_one(&length);
	print("split header and data through an indirect table: status %d used %u pattern %s\n",
	      *status_at(0), length, check_pattern(data_at(0), 4, SECTOR) ? "ok" : "WRONG");
}

static void broken_requests(void)
{
	uint32_t irqs;

	*header_at(0) = (struct header){T_IN, 0, 0};
	struct buf no_status[] = {{HEADERS, 16, 0}};
	irqs = dev.irq_count;
	vq_add(&vq, no_status, 1);
	vq_kick(&vq);
	wait_irq_after(&dev, irqs, WAIT_US);
	print("a request without a status byte: status 0x%x configuration change %s\n",
	      vio_read(&dev, REG_STATUS), dev.isr_bits & INT_CONFIG ? "yes" : "no");
	dev.isr_bits = 0;
	vio_reset(&dev);
	setup();

	struct buf short_header[] = {{HEADERS, 8, 0}, {STATUS, 1, 1}};
	irqs = dev.irq_count;
	vq_add(&vq, short_header, 2);
	vq_kick(&vq);
	wait_irq_after(&dev, irqs, WAIT_US);
	print("a header of 8 bytes: status 0x%x configuration change %s\n", vio_read(&dev, REG_STATUS),
	      dev.isr_bits & INT_CONFIG ? "yes" : "no");
	dev.isr_bits = 0;
}

void guest_main(uint32_t multiboot_info);

void guest_main(uint32_t multiboot_info)
{
	guest_start(multiboot_info);
	readonly = (int)cmdline_number("ro", 0);
	discover();
	find_device(&dev, 2, 0);
	dev.offered = vio_device_features(&dev);
	print("~ offered 0x%016lx\n", dev.offered);
	print("offered seg_max %d ro %d blk_size %d flush %d discard %d write_zeroes %d\n",
	      !!(dev.offered & F_SEG_MAX), !!(dev.offered & F_RO), !!(dev.offered & F_BLK_SIZE),
	      !!(dev.offered & F_FLUSH), !!(dev.offered & F_DISCARD), !!(dev.offered & F_WRITE_ZEROES));
	configuration();
	setup();
	__asm__ volatile("sti");
	reads_and_writes();
	discard_and_zeroes();
	in_flight();
	layouts();
	broken_requests();
	check_reset(&dev, 1);
	setup();
	print("after the reset: read status %d\n", request(T_IN, 0, SECTOR, NULL));
	print("~ spurious interrupts %u\n", dev.spurious);
	print("blk done\n");
	exit_guest(0);
}
