/*
 * What every virtio test guest does first: the runtime, then discovery,
 * printed so that QEMU's microvm and pyvmm can be compared line by line.
 */
#include "common.h"

struct acpi_info acpi;

static const char *const device_names[] = {
	[1] = "net", [2] = "block", [3] = "console", [4] = "entropy",
};

const char *device_name(uint32_t id)
{
	return id < sizeof(device_names) / sizeof(device_names[0]) && device_names[id] ? device_names[id]
										    : "other";
}

void guest_start(uint32_t multiboot_info)
{
	uart_init();
	cmdline_init(multiboot_info);
	interrupts_init();
	random_seed(cmdline_number("seed", 1));
}

void discover(void)
{
	struct vio_dev dev;
	int empty = 0, devices = 0, absent = 0;

	if (!acpi_scan(&acpi))
		fail("no ACPI RSDP");
	print("acpi ok\n");
	for (int i = 0; i < acpi.virtio_count; i++) {
		const struct acpi_virtio *v = &acpi.virtio[i];
		print("dsdt virtio-mmio uid %u base 0x%x size 0x%x\n", v->uid, v->base, v->size);
		print("~ dsdt virtio-mmio uid %u irq %u\n", v->uid, v->irq);
	}
	for (int slot = VIRTIO_MMIO_SLOTS - 1; slot >= 0; slot--) {
		int found = vio_probe(&dev, slot);
		if (found < 0) {
			absent++;
		} else if (found == 0) {
			if (vio_read(&dev, REG_VERSION) == 2)
				empty++;
		} else {
			devices++;
			print("slot %d: %s (id %u) version %u%s\n", slot, device_name(dev.device_id),
			      dev.device_id, vio_read(&dev, REG_VERSION),
			      acpi_virtio_at(&acpi, (uint32_t)dev.base) ? ", in the dsdt" : "");
			print("~ slot %d vendor 0x%08x\n", slot, vio_read(&dev, REG_VENDOR_ID));
		}
	}
	print("slots: %d devices, %d empty (magic, version 2, id 0), %d without a transport\n",
	      devices, empty, absent);
}

void find_device(struct vio_dev *dev, uint32_t id, int vector_index)
{
	if (!vio_find(dev, id))
		fail("no %s device", device_name(id));
	if (!vio_use_irq(dev, &acpi, vector_index))
		fail("no interrupt for the %s device", device_name(id));
	print("~ %s irq %u\n", device_name(id), dev->irq);
}

void print_features(const struct vio_dev *dev, uint64_t device_bits)
{
	print("~ offered 0x%016lx\n", dev->offered);
	print("offered version_1 %d indirect %d event_idx %d device 0x%lx\n",
	      !!(dev->offered & F_VERSION_1), !!(dev->offered & F_INDIRECT),
	      !!(dev->offered & F_EVENT_IDX), dev->offered & device_bits);
}

int wait_irq_after(struct vio_dev *dev, uint32_t seen, uint64_t timeout_us)
{
	return wait_change(&dev->irq_count, seen, timeout_us);
}

void check_reset(struct vio_dev *dev, int queues)
{
	int ok = vio_reset(dev);
	int ready = 0;

	for (int q = 0; q < queues; q++) {
		vio_write(dev, REG_QUEUE_SEL, (uint32_t)q);
		ready |= (int)vio_read(dev, REG_QUEUE_READY);
	}
	print("reset: status %s, queues ready %d, interrupt status 0x%x\n", ok ? "0" : "stuck", ready,
	      vio_read(dev, REG_INTERRUPT_STATUS));
}
