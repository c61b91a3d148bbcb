/*
 * virtio-bad.bin: a misbehaving virtio driver. For the device named by
 * device=N on the command line (2 block, 3 console, 4 entropy; default 4)
 * it breaks one rule at a time, prints what the device answered, resets it
 * and checks that a good request works again:
 *
 *   status written out of order, bits cleared, features not offered or
 *   without VERSION_1, queues made ready too early, with a bad size or with
 *   rings outside RAM; then, on a running device, chains that break the
 *   ring's rules (a head or next past the table, a loop, readable after
 *   writable, nested or NEXT-flagged indirect tables, buffers outside RAM,
 *   an available index that jumps), a notification of a queue that does
 *   not exist, and a reset that does not wait.
 *
 * Lines starting with "~ " are answers where QEMU departs from the
 * specification (it takes any status value, masks features it does not
 * offer, accepts any queue, reads nested indirect descriptors as data and
 * completes transfers outside RAM); pyvmm's are checked by the tests.
 */
#include "common.h"

#define RING 0x400000ull
#define DATA 0x500000ull
#define TABLE 0x580000ull
#define OUTSIDE_RAM 0x40000000ull           /* 1 GiB: past the 128 MiB guests run with */
#define SIZE 8

static struct vio_dev dev;
static struct vq vq;
static uint32_t device_id;
static int queue_index;                     /* the queue the good requests use */

/* A request the device answers when all is well, from `vq`. */
static int good_chain(struct buf *bufs)
{
	static const uint32_t read_sector0[4] = {0, 0, 0, 0};   /* VIRTIO_BLK_T_IN, sector 0 */

	switch (device_id) {
	case 2:
		memcpy((void *)(uintptr_t)DATA, read_sector0, 16);
		bufs[0] = (struct buf){DATA, 16, 0};
		bufs[1] = (struct buf){DATA + 0x1000, 512, 1};
		bufs[2] = (struct buf){DATA + 0x2000, 1, 1};
		return 3;
	case 3:
		memcpy((void *)(uintptr_t)DATA, "+\n", 2);       /* a line of its own */
		bufs[0] = (struct buf){DATA, 2, 0};
		return 1;
	default:
		bufs[0] = (struct buf){DATA, 16, 1};
		return 1;
	}
}

static void status_line(const char *name)
{
	print("%s: status 0x%x, interrupt status 0x%x\n", name, vio_read(&dev, REG_STATUS),
	      vio_read(&dev, REG_INTERRUPT_STATUS));
}

static void host_status_line(const char *name)
{
	print("~ %s: status 0x%x\n", name, vio_read(&dev, REG_STATUS));
}

/* Full initialisation with VERSION_1 | INDIRECT and the good queue ready. */
static void start(void)
{
	if (!vio_negotiate(&dev, F_VERSION_1 | F_INDIRECT))
		fail("the device refused VERSION_1 | INDIRECT_DESC");
	for (int q = 0; q <= queue_index; q++)          /* each queue in its own rings */
		if (!vq_init(&vq, &dev, q, SIZE, RING + 0x10000ull * (uint64_t)q))
			fail("queue %d not ready", q);
	vio_driver_ok(&dev);
	dev.isr_bits = 0;
}

static void good_request(const char *after)
{
	struct buf bufs[3];
	uint32_t length = 0;

	vio_reset(&dev);
	start();
	uint32_t irqs = dev.irq_count;
	if (vq_add(&vq, bufs, good_chain(bufs)) < 0)
		fail("no descriptors");
	vq_kick(&vq);
	int used = vq_wait_used(&vq, WAIT_US);
	vq_used(&vq, &length);
	wait_irq_after(&dev, irqs, WAIT_US);
	print("  then a good request: used %d length %u interrupt %u\n", used, length, dev.irq_count - irqs);
	(void)after;
}

static void early(void)
{
	vio_reset(&dev);
	vio_write(&dev, REG_STATUS, S_DRIVER);
	host_status_line("DRIVER before ACKNOWLEDGE");

	vio_reset(&dev);
	vio_write(&dev, REG_STATUS, S_ACKNOWLEDGE);
	vio_write(&dev, REG_STATUS, S_ACKNOWLEDGE | S_FEATURES_OK);
	host_status_line("FEATURES_OK before DRIVER");

	vio_reset(&dev);
	vio_write(&dev, REG_STATUS, S_ACKNOWLEDGE);
	vio_write(&dev, REG_STATUS, S_ACKNOWLEDGE | S_DRIVER);
	vio_write(&dev, REG_STATUS, S_ACKNOWLEDGE);
	host_status_line("DRIVER cleared without a reset");

	vio_reset(&dev);
	vio_write(&dev, REG_STATUS, S_ACKNOWLEDGE);
	vio_write(&dev, REG_STATUS, S_ACKNOWLEDGE | S_DRIVER);
	vio_write_features(&dev, vio_device_features(&dev) | 1ull << 50);
	vio_write(&dev, REG_STATUS, S_ACKNOWLEDGE | S_DRIVER | S_FEATURES_OK);
	host_status_line("a feature not offered");

	vio_reset(&dev);
	vio_write(&dev, REG_STATUS, S_ACKNOWLEDGE);
	vio_write(&dev, REG_STATUS, S_ACKNOWLEDGE | S_DRIVER);
	vio_write_features(&dev, F_INDIRECT);
	vio_write(&dev, REG_STATUS, S_ACKNOWLEDGE | S_DRIVER | S_FEATURES_OK);
	host_status_line("no VERSION_1");

	vio_reset(&dev);
	vio_write(&dev, REG_STATUS, S_ACKNOWLEDGE);
	vio_write(&dev, REG_STATUS, S_ACKNOWLEDGE | S_DRIVER);
	vio_write_features(&dev, F_VERSION_1);
	vio_write(&dev, REG_QUEUE_SEL, 0);
	vio_write(&dev, REG_QUEUE_NUM, SIZE);
	vio_write(&dev, REG_QUEUE_READY, 1);
	print("~ a queue ready before FEATURES_OK: status 0x%x ready %u\n", vio_read(&dev, REG_STATUS),
	      vio_read(&dev, REG_QUEUE_READY));
	good_request("early");
}

/* A queue set-up that breaks a rule, made ready after FEATURES_OK. */
static void bad_queue(const char *name, uint32_t size, uint64_t desc, uint64_t driver, uint64_t device)
{
	if (!vio_negotiate(&dev, F_VERSION_1))
		fail("negotiation");
	vio_write(&dev, REG_QUEUE_SEL, 0);
	vio_write(&dev, REG_QUEUE_NUM, size);
	vio_write(&dev, REG_QUEUE_DESC, (uint32_t)desc);
	vio_write(&dev, REG_QUEUE_DESC + 4, (uint32_t)(desc >> 32));
	vio_write(&dev, REG_QUEUE_DRIVER, (uint32_t)driver);
	vio_write(&dev, REG_QUEUE_DRIVER + 4, (uint32_t)(driver >> 32));
	vio_write(&dev, REG_QUEUE_DEVICE, (uint32_t)device);
	vio_write(&dev, REG_QUEUE_DEVICE + 4, (uint32_t)(device >> 32));
	vio_write(&dev, REG_QUEUE_READY, 1);
	print("~ %s: status 0x%x ready %u\n", name, vio_read(&dev, REG_STATUS), vio_read(&dev, REG_QUEUE_READY));
	good_request(name);
}

/* On a running device: publish what `build` wrote into the ring and notify.
 * Prints whether the configuration-change bit came with the interrupt (QEMU
 * sets the used-buffer bit along with it; the specification only the first). */
static void bad_ring(const char *name, void (*build)(void), int qemu_differs)
{
	vio_reset(&dev);
	start();
	uint32_t irqs = dev.irq_count;
	build();
	vq_kick(&vq);
	wait_irq_after(&dev, irqs, WAIT_US);
	print("%s%s: status 0x%x, used %u, configuration change %s\n", qemu_differs ? "~ " : "", name,
	      vio_read(&dev, REG_STATUS), vq_used_idx(&vq), dev.isr_bits & INT_CONFIG ? "yes" : "no");
	good_request(name);
}

static void set_desc(uint16_t index, uint64_t addr, uint32_t length, uint16_t flags, uint16_t next)
{
	vq.desc[index] = (struct vring_desc){addr, length, flags, next};
}

static void set_table(uint16_t index, uint64_t addr, uint32_t length, uint16_t flags, uint16_t next)
{
	((volatile struct vring_desc *)(uintptr_t)TABLE)[index] = (struct vring_desc){addr, length, flags, next};
}

static uint16_t writable_flag(void)
{
	return device_id == 3 ? 0 : DESC_WRITE;      /* the console's transmit queue reads */
}

static void head_past_table(void) { vq_publish(&vq, SIZE + 3); }

static void next_past_table(void)
{
	set_desc(0, DATA, 16, DESC_NEXT | writable_flag(), SIZE + 1);
	vq_publish(&vq, 0);
}

static void loop(void)
{
	set_desc(0, DATA, 16, DESC_NEXT | writable_flag(), 1);
	set_desc(1, DATA, 16, DESC_NEXT | writable_flag(), 0);
	vq_publish(&vq, 0);
}

static void readable_after_writable(void)
{
	set_desc(0, DATA, 16, DESC_NEXT | DESC_WRITE, 1);
	set_desc(1, DATA, 16, 0, 0);
	vq_publish(&vq, 0);
}

static void nested_indirect(void)
{
	set_table(0, TABLE + 0x100, 16, DESC_INDIRECT, 0);
	set_desc(0, TABLE, 16, DESC_INDIRECT, 0);
	vq_publish(&vq, 0);
}

static void empty_indirect(void)
{
	set_desc(0, TABLE, 0, DESC_INDIRECT, 0);
	vq_publish(&vq, 0);
}

static void buffer_outside_ram(void)
{
	set_desc(0, OUTSIDE_RAM, 16, writable_flag(), 0);
	vq_publish(&vq, 0);
}

static void avail_index_jumps(void)
{
	set_desc(0, DATA, 16, writable_flag(), 0);
	vq.avail[2] = 0;
	vq.avail_idx = SIZE + 5;
	vq.avail[1] = vq.avail_idx;
}

void guest_main(uint32_t multiboot_info);

void guest_main(uint32_t multiboot_info)
{
	guest_start(multiboot_info);
	device_id = (uint32_t)cmdline_number("device", 4);
	queue_index = device_id == 3 ? 1 : 0;
	discover();
	find_device(&dev, device_id, 0);
	__asm__ volatile("sti");

	early();
	bad_queue("a queue of 3 entries", 3, RING, RING + 0x1000, RING + 0x2000);
	bad_queue("a queue of 2048 entries", 2048, RING, RING + 0x8000, RING + 0xa000);
	bad_queue("a descriptor table outside RAM", SIZE, OUTSIDE_RAM, RING + 0x1000, RING + 0x2000);
	bad_queue("a used ring outside RAM", SIZE, RING, RING + 0x1000, OUTSIDE_RAM);

	bad_ring("a head past the table", head_past_table, 0);
	bad_ring("a next past the table", next_past_table, 0);
	bad_ring("a descriptor loop", loop, 0);
	bad_ring("readable after writable", readable_after_writable, 0);
	/* QEMU reads a nested indirect descriptor as data, and completes a
	 * transfer to an address outside RAM (its bytes go nowhere). */
	bad_ring("an indirect table inside an indirect table", nested_indirect, 1);
	bad_ring("an empty indirect table", empty_indirect, 0);
	bad_ring("a buffer outside RAM", buffer_outside_ram, 1);
	/* QEMU's console takes the stale entries a jump makes available. */
	bad_ring("an available index that jumps", avail_index_jumps, device_id == 3);

	vio_reset(&dev);
	start();
	vio_write(&dev, REG_QUEUE_NOTIFY, 7);
	vio_write(&dev, REG_QUEUE_NOTIFY, 0xffff);
	status_line("notifying queues that do not exist");
	vio_write(&dev, REG_STATUS, 0);                   /* a reset without waiting for it */
	good_request("no wait");
	print("~ spurious interrupts %u\n", dev.spurious);
	print("bad done\n");
	exit_guest(0);
}
