/*
 * A small virtio-mmio (version 2) driver with split virtqueues, for the
 * test guests: probing the slots, the initialisation sequence of virtio
 * 1.2 section 3.1.1, queue set-up, direct and indirect chains, used-ring
 * completion, notification and interrupt suppression (flags, event
 * indices), and raw register access for misbehaving on purpose.
 */
#ifndef VIRTIO_VIO_H
#define VIRTIO_VIO_H

#include "guest.h"

#define VIRTIO_MMIO_BASE 0xfeb00000u
#define VIRTIO_MMIO_SLOT 0x200u
#define VIRTIO_MMIO_SLOTS 24

#define REG_MAGIC 0x000
#define REG_VERSION 0x004
#define REG_DEVICE_ID 0x008
#define REG_VENDOR_ID 0x00c
#define REG_DEVICE_FEATURES 0x010
#define REG_DEVICE_FEATURES_SEL 0x014
#define REG_DRIVER_FEATURES 0x020
#define REG_DRIVER_FEATURES_SEL 0x024
#define REG_QUEUE_SEL 0x030
#define REG_QUEUE_NUM_MAX 0x034
#define REG_QUEUE_NUM 0x038
#define REG_QUEUE_READY 0x044
#define REG_QUEUE_NOTIFY 0x050
#define REG_INTERRUPT_STATUS 0x060
#define REG_INTERRUPT_ACK 0x064
#define REG_STATUS 0x070
#define REG_QUEUE_DESC 0x080
#define REG_QUEUE_DRIVER 0x090
#define REG_QUEUE_DEVICE 0x0a0
#define REG_SHM_LEN_LOW 0x0b0
#define REG_CONFIG_GENERATION 0x0fc
#define REG_CONFIG 0x100

#define MAGIC 0x74726976u

#define S_ACKNOWLEDGE 1
#define S_DRIVER 2
#define S_DRIVER_OK 4
#define S_FEATURES_OK 8
#define S_NEEDS_RESET 0x40
#define S_FAILED 0x80

#define F_INDIRECT (1ull << 28)
#define F_EVENT_IDX (1ull << 29)
#define F_VERSION_1 (1ull << 32)

#define DESC_NEXT 1
#define DESC_WRITE 2
#define DESC_INDIRECT 4
#define AVAIL_NO_INTERRUPT 1

#define INT_USED 1
#define INT_CONFIG 2

struct vring_desc {
	uint64_t addr;
	uint32_t len;
	uint16_t flags;
	uint16_t next;
};

struct vio_dev {
	uintptr_t base;
	int slot;
	uint32_t device_id, irq;
	uint64_t offered, features;
	volatile uint32_t irq_count, isr_bits, spurious;
};

struct vq {
	struct vio_dev *dev;
	int index;
	uint16_t size;
	volatile struct vring_desc *desc;
	volatile uint16_t *avail;       /* flags, idx, ring[size], used_event */
	volatile uint16_t *used;        /* flags, idx, then {u32 id, u32 len}[size], avail_event */
	uint64_t desc_addr, avail_addr, used_addr;
	uint16_t avail_idx, last_used, free_head, num_free;
};

struct buf {
	uint64_t addr;
	uint32_t len;
	int writable;
};

uint32_t vio_read(const struct vio_dev *dev, uint32_t reg);
void vio_write(const struct vio_dev *dev, uint32_t reg, uint32_t value);
int vio_probe(struct vio_dev *dev, int slot);           /* 1: a device; 0: empty; -1: no transport */
int vio_find(struct vio_dev *dev, uint32_t device_id);   /* the first slot from the top */
uint64_t vio_device_features(const struct vio_dev *dev);
void vio_write_features(const struct vio_dev *dev, uint64_t features);
int vio_reset(struct vio_dev *dev);                     /* 1 once the status reads 0 */
int vio_negotiate(struct vio_dev *dev, uint64_t wanted); /* reset..FEATURES_OK; 1 if kept */
int vq_init(struct vq *vq, struct vio_dev *dev, int index, uint16_t size, uint64_t base);
void vio_driver_ok(struct vio_dev *dev);
void vio_irq_handler(void *dev);                        /* reads and acks InterruptStatus */
int vio_use_irq(struct vio_dev *dev, const struct acpi_info *acpi, int index);

int vq_add(struct vq *vq, const struct buf *bufs, int count);                 /* head or -1 */
int vq_add_indirect(struct vq *vq, const struct buf *bufs, int count, uint64_t table);
void vq_publish(struct vq *vq, uint16_t head);
void vq_kick(struct vq *vq);
int vq_used(struct vq *vq, uint32_t *length);           /* head of the next used chain or -1 */
int vq_wait_used(struct vq *vq, uint64_t timeout_us);   /* 1 when the used index moved */
uint16_t vq_used_idx(const struct vq *vq);
void vq_set_no_interrupt(struct vq *vq, int on);
void vq_set_used_event(struct vq *vq, uint16_t index);
uint16_t vq_avail_event(const struct vq *vq);

#endif
