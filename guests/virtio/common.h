#ifndef VIRTIO_COMMON_H
#define VIRTIO_COMMON_H

#include "vio.h"

#define WAIT_US 2000000ull         /* how long a guest waits for a device: 2 s */
#define QUIET_US 50000ull          /* how long it waits to see that nothing comes */

extern struct acpi_info acpi;

void guest_start(uint32_t multiboot_info);
void discover(void);
const char *device_name(uint32_t id);
void find_device(struct vio_dev *dev, uint32_t id, int vector_index);
void print_features(const struct vio_dev *dev, uint64_t device_bits);
int wait_irq_after(struct vio_dev *dev, uint32_t seen, uint64_t timeout_us);
void check_reset(struct vio_dev *dev, int queues);

#endif
