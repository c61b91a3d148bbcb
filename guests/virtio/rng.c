/*
 * virtio-rng.bin: drives the entropy device through everything a driver
 * does, and prints what it saw (README.md: "virtio guests").
 *
 * Discovery; initialisation with VERSION_1 and INDIRECT_DESC; one request
 * per shape (one buffer, a chain of three, an indirect table, three at
 * once); NO_INTERRUPT; a reset; then again with EVENT_IDX, where the
 * driver's used_event decides which completion interrupts. Ends with
 * debug-exit 0 (status 1); a failure prints "FAIL: ..." and exits 0x7f.
 */
#include "common.h"

#define RING 0x400000ull
#define DATA 0x500000ull
#define TABLE 0x580000ull

static struct vio_dev dev;
static struct vq vq;

static int nonzero(uint64_t addr, uint32_t length)
{
	const uint8_t *p = (const uint8_t *)(uintptr_t)addr;

	for (uint32_t i = 0; i < length; i++)
		if (p[i])
			return 1;
	return 0;
}

/* Submits the chains (through indirect tables if asked), kicks once, waits
 * for all of them, then for an interrupt: long when one is expected, briefly
 * when none should come; prints the used lengths and interrupts seen. */
static void request(const char *name, const struct buf *bufs, int count, int chains, int indirect,
		    int interrupt_expected)
{
	uint32_t irqs = dev.irq_count, lengths[8], total = 0;

	memset((void *)(uintptr_t)DATA, 0, 0x3000);
	for (int c = 0; c < chains; c++) {
		int head = indirect ? vq_add_indirect(&vq, bufs, count, TABLE + 0x100ull * c)
				    : vq_add(&vq, bufs, count);
		if (head < 0)
			fail("%s: no free descriptors", name);
	}
	vq_kick(&vq);
	for (int c = 0; c < chains; c++) {
		if (!vq_wait_used(&vq, WAIT_US))
			fail("%s: chain %d not used", name, c);
		vq_used(&vq, &lengths[c]);
	}
	wait_irq_after(&dev, irqs, interrupt_expected ? WAIT_US : QUIET_US);
	print("%s: used", name);
	for (int c = 0; c < chains; c++) {
		print(" %u", lengths[c]);
		total += lengths[c];
	}
	print(", random bytes %s, interrupts %u, status 0x%x\n",
	      nonzero(DATA, 0x3000) ? "yes" : "no", dev.irq_count - irqs, dev.isr_bits);
	dev.isr_bits = 0;
	(void)total;
}

static void setup(uint64_t features, uint16_t size)
{
	int ok = vio_negotiate(&dev, features);

	print("features_ok %d, negotiated version_1 %d indirect %d event_idx %d\n", ok,
	      !!(dev.features & F_VERSION_1), !!(dev.features & F_INDIRECT), !!(dev.features & F_EVENT_IDX));
	vio_write(&dev, REG_QUEUE_SEL, 0);
	print("queue 0 max %u", vio_read(&dev, REG_QUEUE_NUM_MAX));
	vio_write(&dev, REG_QUEUE_SEL, 1);
	print(", queue 1 max %u\n", vio_read(&dev, REG_QUEUE_NUM_MAX));
	int ready = vq_init(&vq, &dev, 0, size, RING);
	vio_driver_ok(&dev);
	print("queue 0 size %u ready %d, status 0x%x\n", size, ready, vio_read(&dev, REG_STATUS));
}

void guest_main(uint32_t multiboot_info);

void guest_main(uint32_t multiboot_info)
{
	guest_start(multiboot_info);
	discover();
	find_device(&dev, 4, 0);
	print("config bytes 0x%x 0x%x\n", mmio_read8(dev.base + REG_CONFIG), mmio_read32(dev.base + REG_CONFIG));
	setup(F_VERSION_1 | F_INDIRECT, 8);
	dev.offered = vio_device_features(&dev);
	print_features(&dev, 0xffffffull & ~(1ull << 24 | 1ull << 27));
	__asm__ volatile("sti");

	struct buf one[] = {{DATA, 64, 1}};
	struct buf three[] = {{DATA, 16, 1}, {DATA + 0x1000, 16, 1}, {DATA + 0x2000, 32, 1}};
	struct buf two[] = {{DATA, 24, 1}, {DATA + 0x1000, 24, 1}};
	request("one buffer", one, 1, 1, 0, 1);
	request("a chain of three", three, 3, 1, 0, 1);
	request("an indirect table of two", two, 2, 1, 1, 1);
	request("three chains at once", one, 1, 3, 0, 1);
	vq_set_no_interrupt(&vq, 1);
	request("no_interrupt", one, 1, 1, 0, 0);
	vq_set_no_interrupt(&vq, 0);

	check_reset(&dev, 1);
	setup(F_VERSION_1 | F_INDIRECT | F_EVENT_IDX, 16);
	vq_set_used_event(&vq, 1);          /* interrupt once entry 1 is used */
	request("event_idx first", one, 1, 1, 0, 1);
	request("event_idx reaches entry 1", one, 1, 1, 0, 1);
	request("event_idx past it", one, 1, 1, 0, 0);
	print("avail_event %u (avail index %u)\n", vq_avail_event(&vq), vq.avail_idx);
	check_reset(&dev, 1);
	print("~ spurious interrupts %u\n", dev.spurious);
	print("rng done\n");
	exit_guest(0);
}
