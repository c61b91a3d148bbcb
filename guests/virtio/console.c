/*
 * virtio-console.bin: drives the virtio console (one port, no MULTIPORT).
 *
 * Configuration space and emergency write; output on the transmit queue
 * (one buffer, a chain, an indirect table, several chains at once); input
 * on the receive queue: it prints "console ready for input", then collects
 * what arrives until a '.' and prints it; a reset, then output again.
 * Lines the guest prints itself go to the UART; "hvc: ..." lines are the
 * ones it sends through the virtio console.
 */
#include "common.h"

#define RING 0x400000ull
#define DATA 0x500000ull
#define RX_DATA 0x540000ull
#define TABLE 0x580000ull
#define RX_BUFFERS 4
#define RX_SIZE 16
#define INPUT_US 30000000ull

static struct vio_dev dev;
static struct vq rx, tx;

static void send(const char *name, const char *const *pieces, int count, int chains, int indirect)
{
	struct buf bufs[8];
	uint64_t at = DATA;
	uint32_t irqs = dev.irq_count, length, total = 0;

	for (int i = 0; i < count; i++) {
		size_t n = strlen(pieces[i]);
		memcpy((void *)(uintptr_t)at, pieces[i], n);
		bufs[i] = (struct buf){at, (uint32_t)n, 0};
		at += 0x100;
	}
	print("%s:\n", name);
	for (int c = 0; c < chains; c++)
		if ((indirect ? vq_add_indirect(&tx, bufs, count, TABLE) : vq_add(&tx, bufs, count)) < 0)
			fail("%s: no descriptors", name);
	vq_kick(&tx);
	for (int c = 0; c < chains; c++) {
		if (!vq_wait_used(&tx, WAIT_US))
			fail("%s: not used", name);
		vq_used(&tx, &length);
		total += length;
	}
	wait_irq_after(&dev, irqs, WAIT_US);
	print("%s: used length %u, interrupts %u\n", name, total, dev.irq_count - irqs);
}

static void post_rx(int index)
{
	struct buf b = {RX_DATA + (uint64_t)index * RX_SIZE, RX_SIZE, 1};

	if (vq_add(&rx, &b, 1) < 0)
		fail("rx: no descriptors");
}

static void setup(void)
{
	if (!vio_negotiate(&dev, F_VERSION_1 | F_INDIRECT))
		fail("FEATURES_OK refused");
	if (!vq_init(&rx, &dev, 0, 8, RING) || !vq_init(&tx, &dev, 1, 8, RING + 0x2000))
		fail("queues not ready");
	vio_driver_ok(&dev);
	print("queues ready, status 0x%x\n", vio_read(&dev, REG_STATUS));
}

static void receive(void)
{
	char text[128];
	int n = 0, buffers = 0;

	for (int i = 0; i < RX_BUFFERS; i++)
		post_rx(i);
	vq_kick(&rx);
	print("console ready for input\n");
	uint64_t deadline = rdtsc() + INPUT_US * tsc_per_us();
	while (n < (int)sizeof(text) - 1 && (n == 0 || text[n - 1] != '.')) {
		if (rdtsc() > deadline)
			fail("no input (got %d bytes)", n);
		uint32_t length;
		if (!vq_wait_used(&rx, 100000))
			continue;
		int head = vq_used(&rx, &length);
		for (uint32_t i = 0; i < length && n < (int)sizeof(text) - 1; i++)
			text[n++] = ((const char *)(uintptr_t)rx.desc[head].addr)[i];
		buffers++;
		/* The buffer goes back to the device at once. */
		struct buf b = {rx.desc[head].addr, RX_SIZE, 1};
		vq_add(&rx, &b, 1);
		vq_kick(&rx);
	}
	text[n] = 0;
	print("received %d bytes: %s\n", n, text);
	print("~ in %d buffers\n", buffers);
}

void guest_main(uint32_t multiboot_info);

void guest_main(uint32_t multiboot_info)
{
	guest_start(multiboot_info);
	discover();
	find_device(&dev, 3, 0);
	dev.offered = vio_device_features(&dev);
	print_features(&dev, 0x7);
	print("config: cols %u rows %u max_nr_ports %u emerg_wr %u\n", mmio_read16(dev.base + REG_CONFIG),
	      mmio_read16(dev.base + REG_CONFIG + 2), mmio_read32(dev.base + REG_CONFIG + 4),
	      mmio_read32(dev.base + REG_CONFIG + 8));
	print("emergency write:\n");
	mmio_write32(dev.base + REG_CONFIG + 8, 'h');
	mmio_write32(dev.base + REG_CONFIG + 8, 'v');
	mmio_write32(dev.base + REG_CONFIG + 8, 'c');
	mmio_write8(dev.base + REG_CONFIG + 8, '!');
	mmio_write8(dev.base + REG_CONFIG + 8, '\n');
	print("emergency write done\n");

	setup();
	__asm__ volatile("sti");
	static const char *const hello[] = {"hvc: hello\n"};
	static const char *const chain[] = {"hvc: a ", "chain ", "of three\n"};
	static const char *const table[] = {"hvc: an indirect ", "table\n"};
	static const char *const twice[] = {"hvc: again\n"};
	send("one buffer", hello, 1, 1, 0);
	send("a chain", chain, 3, 1, 0);
	send("an indirect table", table, 2, 1, 1);
	send("three chains at once", twice, 1, 3, 0);
	receive();
	check_reset(&dev, 2);
	setup();
	static const char *const after[] = {"hvc: after the reset\n"};
	send("after the reset", after, 1, 1, 0);
	print("~ spurious interrupts %u\n", dev.spurious);
	print("console done\n");
	exit_guest(0);
}
