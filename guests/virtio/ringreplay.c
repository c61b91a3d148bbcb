/*
 * virtio-ringreplay.bin: hands a device rings the host wrote into guest
 * memory (pyvmm.testing.virtio_kvm.replay_rings_on_kvm) and records what the
 * device did with them, through real MMIO exits, doorbells and interrupts.
 *
 * Parameters at 0x1000000: u32 magic "RRPL", u32 device ID, u32 queue
 * index, u32 queue size, u64 features, u64 descriptor table, u64 available
 * ring, u64 used ring. The guest negotiates the features, points the queue
 * at the three areas without touching them, sets DRIVER_OK, notifies, and
 * waits until the device is quiet (no interrupt, no used entry, no status
 * change for QUIET_US). Results at 0x1800000: u32 magic "RRES", u32 status,
 * u32 interrupt status bits seen, u32 interrupts, u32 used index, u32
 * features accepted. Exits with debug-exit 0 (status 1).
 */
#include "common.h"

#define PARAMS 0x1000000ull
#define RESULTS 0x1800000ull
#define MAGIC_PARAMS 0x4c505252u        /* "RRPL" */
#define MAGIC_RESULTS 0x53455252u       /* "RRES" */

struct params {
	uint32_t magic, device_id, queue, size;
	uint64_t features, desc, avail, used;
};

static struct vio_dev dev;

static void write64(uint32_t reg, uint64_t value)
{
	vio_write(&dev, reg, (uint32_t)value);
	vio_write(&dev, reg + 4, (uint32_t)(value >> 32));
}

void guest_main(uint32_t multiboot_info);

void guest_main(uint32_t multiboot_info)
{
	const struct params *p = (const struct params *)(uintptr_t)PARAMS;
	uint32_t *results = (uint32_t *)(uintptr_t)RESULTS;

	guest_start(multiboot_info);
	if (p->magic != MAGIC_PARAMS)
		fail("no parameters");
	struct params params = *p;         /* a device may scribble over them later */
	if (!acpi_scan(&acpi))
		fail("no ACPI");
	find_device(&dev, params.device_id, 0);
	int accepted = vio_negotiate(&dev, params.features);
	vio_write(&dev, REG_QUEUE_SEL, params.queue);
	vio_write(&dev, REG_QUEUE_NUM, params.size);
	write64(REG_QUEUE_DESC, params.desc);
	write64(REG_QUEUE_DRIVER, params.avail);
	write64(REG_QUEUE_DEVICE, params.used);
	vio_write(&dev, REG_QUEUE_READY, 1);
	vio_driver_ok(&dev);
	__asm__ volatile("sti");
	vio_write(&dev, REG_QUEUE_NOTIFY, params.queue);

	volatile uint16_t *used_idx = (volatile uint16_t *)(uintptr_t)(params.used + 2);
	for (;;) {
		uint32_t irqs = dev.irq_count, status = vio_read(&dev, REG_STATUS);
		uint16_t used = *used_idx;
		wait_irq_after(&dev, irqs, QUIET_US);
		if (dev.irq_count == irqs && *used_idx == used && vio_read(&dev, REG_STATUS) == status)
			break;
	}
	results[1] = vio_read(&dev, REG_STATUS);
	results[2] = dev.isr_bits;
	results[3] = dev.irq_count;
	results[4] = *used_idx;
	results[5] = (uint32_t)accepted;
	results[0] = MAGIC_RESULTS;
	exit_guest(0);
}
