/*
 * The test guests' virtio-mmio driver (see vio.h).
 */
#include "vio.h"

#define RESET_WAIT_READS 100000

uint32_t vio_read(const struct vio_dev *dev, uint32_t reg)
{
	return mmio_read32(dev->base + reg);
}

void vio_write(const struct vio_dev *dev, uint32_t reg, uint32_t value)
{
	mmio_write32(dev->base + reg, value);
}

int vio_probe(struct vio_dev *dev, int slot)
{
	memset(dev, 0, sizeof(*dev));
	dev->slot = slot;
	dev->base = VIRTIO_MMIO_BASE + (uintptr_t)slot * VIRTIO_MMIO_SLOT;
	if (vio_read(dev, REG_MAGIC) != MAGIC)
		return -1;
	dev->device_id = vio_read(dev, REG_DEVICE_ID);
	return dev->device_id != 0;
}

int vio_find(struct vio_dev *dev, uint32_t device_id)
{
	for (int slot = VIRTIO_MMIO_SLOTS - 1; slot >= 0; slot--)
		if (vio_probe(dev, slot) == 1 && dev->device_id == device_id)
			return 1;
	return 0;
}

uint64_t vio_device_features(const struct vio_dev *dev)
{
	vio_write(dev, REG_DEVICE_FEATURES_SEL, 1);
	uint64_t high = vio_read(dev, REG_DEVICE_FEATURES);
	vio_write(dev, REG_DEVICE_FEATURES_SEL, 0);
	return high << 32 | vio_read(dev, REG_DEVICE_FEATURES);
}

void vio_write_features(const struct vio_dev *dev, uint64_t features)
{
	vio_write(dev, REG_DRIVER_FEATURES_SEL, 1);
	vio_write(dev, REG_DRIVER_FEATURES, (uint32_t)(features >> 32));
	vio_write(dev, REG_DRIVER_FEATURES_SEL, 0);
	vio_write(dev, REG_DRIVER_FEATURES, (uint32_t)features);
}

int vio_reset(struct vio_dev *dev)
{
	vio_write(dev, REG_STATUS, 0);
	for (int i = 0; i < RESET_WAIT_READS; i++)
		if (vio_read(dev, REG_STATUS) == 0)
			return 1;
	return 0;
}

int vio_negotiate(struct vio_dev *dev, uint64_t wanted)
{
	if (!vio_reset(dev))
		return 0;
	vio_write(dev, REG_STATUS, S_ACKNOWLEDGE);
	vio_write(dev, REG_STATUS, S_ACKNOWLEDGE | S_DRIVER);
	dev->offered = vio_device_features(dev);
	dev->features = wanted & dev->offered;
	vio_write_features(dev, dev->features);
	vio_write(dev, REG_STATUS, S_ACKNOWLEDGE | S_DRIVER | S_FEATURES_OK);
	return (vio_read(dev, REG_STATUS) & S_FEATURES_OK) != 0;
}

static void write64(const struct vio_dev *dev, uint32_t reg, uint64_t value)
{
	vio_write(dev, reg, (uint32_t)value);
	vio_write(dev, reg + 4, (uint32_t)(value >> 32));
}

int vq_init(struct vq *vq, struct vio_dev *dev, int index, uint16_t size, uint64_t base)
{
	memset(vq, 0, sizeof(*vq));
	vq->dev = dev;
	vq->index = index;
	vq->size = size;
	vq->desc_addr = base;
	vq->avail_addr = base + 16ull * size;
	vq->used_addr = (vq->avail_addr + 6 + 2ull * size + 4095) & ~4095ull;
	vq->desc = (volatile struct vring_desc *)(uintptr_t)vq->desc_addr;
	vq->avail = (volatile uint16_t *)(uintptr_t)vq->avail_addr;
	vq->used = (volatile uint16_t *)(uintptr_t)vq->used_addr;
	memset((void *)(uintptr_t)base, 0, vq->used_addr + 6 + 8ull * size - base);
	for (uint16_t i = 0; i < size; i++)
		vq->desc[i].next = (uint16_t)(i + 1);
	vq->num_free = size;
	vio_write(dev, REG_QUEUE_SEL, (uint32_t)index);
	if (vio_read(dev, REG_QUEUE_READY) || size > vio_read(dev, REG_QUEUE_NUM_MAX))
		return 0;
	vio_write(dev, REG_QUEUE_NUM, size);
	write64(dev, REG_QUEUE_DESC, vq->desc_addr);
	write64(dev, REG_QUEUE_DRIVER, vq->avail_addr);
	write64(dev, REG_QUEUE_DEVICE, vq->used_addr);
	vio_write(dev, REG_QUEUE_READY, 1);
	return vio_read(dev, REG_QUEUE_READY) == 1;
}

void vio_driver_ok(struct vio_dev *dev)
{
	vio_write(dev, REG_STATUS, vio_read(dev, REG_STATUS) | S_DRIVER_OK);
}

void vio_irq_handler(void *arg)
{
	struct vio_dev *dev = arg;
	uint32_t status = vio_read(dev, REG_INTERRUPT_STATUS);

	if (!status) {
		/* Not ours: kvm_pvm hosts deliver a level-triggered vector again
		 * after its handler returned (QEMU+KVM shows it too). */
		dev->spurious++;
		return;
	}
	vio_write(dev, REG_INTERRUPT_ACK, status);
	dev->isr_bits |= status;
	dev->irq_count++;
}

int vio_use_irq(struct vio_dev *dev, const struct acpi_info *acpi, int index)
{
	const struct acpi_virtio *entry = acpi_virtio_at(acpi, (uint32_t)dev->base);

	if (!entry)
		return 0;
	dev->irq = entry->irq;
	return irq_route(acpi, entry->irq, index, vio_irq_handler, dev) == 0;
}

static int take_descriptors(struct vq *vq, int count, uint16_t *indices)
{
	if (count > vq->num_free)
		return 0;
	for (int i = 0; i < count; i++) {
		indices[i] = vq->free_head;
		vq->free_head = vq->desc[vq->free_head].next;
	}
	vq->num_free = (uint16_t)(vq->num_free - count);
	return 1;
}

void vq_publish(struct vq *vq, uint16_t head)
{
	vq->avail[2 + vq->avail_idx % vq->size] = head;
	barrier();                              /* x86 keeps stores in order */
	vq->avail_idx++;
	vq->avail[1] = vq->avail_idx;
}

int vq_add(struct vq *vq, const struct buf *bufs, int count)
{
	uint16_t indices[64];

	if (count < 1 || count > 64 || !take_descriptors(vq, count, indices))
		return -1;
	for (int i = 0; i < count; i++) {
		volatile struct vring_desc *d = &vq->desc[indices[i]];
		d->addr = bufs[i].addr;
		d->len = bufs[i].len;
		d->flags = (uint16_t)((bufs[i].writable ? DESC_WRITE : 0) | (i + 1 < count ? DESC_NEXT : 0));
		d->next = i + 1 < count ? indices[i + 1] : 0;
	}
	vq_publish(vq, indices[0]);
	return indices[0];
}

int vq_add_indirect(struct vq *vq, const struct buf *bufs, int count, uint64_t table)
{
	uint16_t head;
	struct vring_desc *entries = (struct vring_desc *)(uintptr_t)table;

	if (count < 1 || !take_descriptors(vq, 1, &head))
		return -1;
	for (int i = 0; i < count; i++) {
		entries[i].addr = bufs[i].addr;
		entries[i].len = bufs[i].len;
		entries[i].flags = (uint16_t)((bufs[i].writable ? DESC_WRITE : 0) | (i + 1 < count ? DESC_NEXT : 0));
		entries[i].next = (uint16_t)(i + 1);
	}
	vq->desc[head].addr = table;
	vq->desc[head].len = (uint32_t)(16 * count);
	vq->desc[head].flags = DESC_INDIRECT;
	vq_publish(vq, head);
	return head;
}

void vq_kick(struct vq *vq)
{
	mb();                                   /* the index is visible before the notification */
	vio_write(vq->dev, REG_QUEUE_NOTIFY, (uint32_t)vq->index);
}

uint16_t vq_used_idx(const struct vq *vq)
{
	return vq->used[1];
}

int vq_used(struct vq *vq, uint32_t *length)
{
	if (vq->last_used == vq_used_idx(vq))
		return -1;
	volatile uint32_t *element = (volatile uint32_t *)(vq->used + 2) + 2 * (vq->last_used % vq->size);
	uint32_t head = element[0];
	if (length)
		*length = element[1];
	vq->last_used++;
	/* Give the chain's descriptors back (direct chains follow NEXT; indirect use one). */
	if (head < vq->size) {
		uint16_t index = (uint16_t)head, count = 1;
		while ((vq->desc[index].flags & DESC_NEXT) && count < vq->size) {
			index = vq->desc[index].next;
			count++;
		}
		vq->desc[index].next = vq->free_head;
		vq->free_head = (uint16_t)head;
		vq->num_free = (uint16_t)(vq->num_free + count);
	}
	return (int)head;
}

int vq_wait_used(struct vq *vq, uint64_t timeout_us)
{
	uint64_t deadline = rdtsc() + timeout_us * tsc_per_us();

	while (vq->last_used == vq_used_idx(vq)) {
		if (rdtsc() > deadline)
			return 0;
		uint32_t seen = vq->dev->irq_count;
		if (vq->last_used != vq_used_idx(vq))
			break;
		wait_change(&vq->dev->irq_count, seen, 1000);
	}
	return 1;
}

void vq_set_no_interrupt(struct vq *vq, int on)
{
	vq->avail[0] = on ? AVAIL_NO_INTERRUPT : 0;
}

void vq_set_used_event(struct vq *vq, uint16_t index)
{
	vq->avail[2 + vq->size] = index;
}

uint16_t vq_avail_event(const struct vq *vq)
{
	return *(volatile uint16_t *)((uintptr_t)vq->used_addr + 4 + 8ull * vq->size);
}
