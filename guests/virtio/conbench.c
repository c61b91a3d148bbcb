/*
 * virtio-conbench.bin: console output throughput, for bench/virtio_console.
 *
 * Command line: bytes=N chunk=BYTES depth=N. Sends N bytes of text (lines
 * of serial_flood.bin's pattern: 63 characters of "0123456789abcdef"
 * repeated, then '\n') through the transmit queue in buffers of `chunk`
 * bytes, `depth` of them in flight, then prints
 *     bench bytes N us T
 * (TSC-timed) on the UART and exits with status 1.
 */
#include "common.h"

#define RING 0x400000ull
#define DATA 0x1000000ull
#define QSIZE 64
#define MAX_DEPTH 16

static struct vio_dev dev;
static struct vq rx, tx;

void guest_main(uint32_t multiboot_info);

void guest_main(uint32_t multiboot_info)
{
	guest_start(multiboot_info);
	uint64_t total = cmdline_number("bytes", 1 << 20);
	uint32_t chunk = (uint32_t)cmdline_number("chunk", 4096);
	int depth = (int)cmdline_number("depth", 4);
	if (!chunk || chunk > (1u << 20) || depth < 1 || depth > MAX_DEPTH)
		fail("bad parameters");
	if (!acpi_scan(&acpi))
		fail("no ACPI");
	find_device(&dev, 3, 0);
	if (!vio_negotiate(&dev, F_VERSION_1))
		fail("FEATURES_OK refused");
	if (!vq_init(&rx, &dev, 0, 8, RING) || !vq_init(&tx, &dev, 1, QSIZE, RING + 0x4000))
		fail("queues not ready");
	vio_driver_ok(&dev);
	/* The text: byte k of the stream is line[k % 64], as serial_flood.bin sends it. */
	char *text = (char *)(uintptr_t)DATA;
	uint32_t span = chunk + 64;
	for (uint32_t k = 0; k < span; k++)
		text[k] = k % 64 == 63 ? '\n' : "0123456789abcdef"[(k % 64) % 16];
	tsc_per_us();
	__asm__ volatile("sti");

	uint64_t sent = 0, done = 0;
	int in_flight = 0;
	uint64_t start = rdtsc();
	while (done < total) {
		while (in_flight < depth && sent < total) {
			uint32_t n = total - sent < chunk ? (uint32_t)(total - sent) : chunk;
			struct buf b = {DATA + sent % 64, n, 0};
			if (vq_add(&tx, &b, 1) < 0)
				fail("no descriptors");
			sent += n;
			in_flight++;
		}
		vq_kick(&tx);
		if (!vq_wait_used(&tx, WAIT_US))
			fail("transmit stalled");
		uint32_t length;
		while (vq_used(&tx, &length) >= 0)
			in_flight--;
		done = sent - (uint64_t)in_flight * chunk;
		if (in_flight == 0)
			done = sent;
	}
	uint64_t elapsed = (rdtsc() - start) / tsc_per_us();
	print("bench bytes %lu us %lu\n", total, elapsed);
	exit_guest(0);
}
