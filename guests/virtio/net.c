/*
 * virtio-net.bin: a tiny network stack on the virtio network device, for
 * tests and benchmarks driven from the host through a TAP device.
 *
 * It answers ARP requests for its address, ICMP echo requests, and UDP
 * datagrams to port 7 (echo); a datagram "quit" to port 9 is answered
 * "bye", then it prints a summary and exits (debug-exit 0, status 1).
 * Before serving it prints its MAC address, the link status and the
 * features, then "net ready"; a configuration interrupt prints the link
 * status again.
 *
 * Command line (all optional): ip=A.B.C.D (10.0.2.15), mrg=0|1 (1:
 * VIRTIO_NET_F_MRG_RXBUF), csum=0|1 (0: no offloads; 1: CSUM and
 * GUEST_CSUM, and UDP replies leave their checksum to the device),
 * bufsize=B (receive buffer bytes: 2048 with mrg, 1526 without),
 * rxbufs=N (64 receive buffers), quiet=1 (no line per packet),
 * resets=N (first set the device up and reset it N times, serving for
 * resetms=MS (20) each time, whatever arrives meanwhile).
 */
#include "common.h"

#define RX_RING 0x400000ull
#define TX_RING 0x440000ull
#define RX_AREA 0x800000ull           /* rxbufs x bufsize, up to 256 x 64 KiB */
#define TX_AREA 0x2000000ull          /* TX_SLOTS x TX_SLOT */
#define FRAME_AREA 0x3000000ull       /* a frame gathered from several buffers */
#define QSIZE 256
#define TX_SLOTS 64
#define TX_SLOT 0x10000ull
#define MAX_FRAME 65550u
#define HDR_LEN 12

#define F_CSUM (1ull << 0)
#define F_GUEST_CSUM (1ull << 1)
#define F_MAC (1ull << 5)
#define F_GUEST_TSO4 (1ull << 7)
#define F_HOST_TSO4 (1ull << 11)
#define F_MRG_RXBUF (1ull << 15)
#define F_STATUS (1ull << 16)
#define NEEDS_CSUM 1

#define ETH_ARP 0x0806
#define ETH_IP 0x0800
#define PROTO_ICMP 1
#define PROTO_UDP 17
#define ECHO_PORT 7
#define CONTROL_PORT 9

struct net_hdr {
	uint8_t flags, gso_type;
	uint16_t hdr_len, gso_size, csum_start, csum_offset, num_buffers;
} __attribute__((packed));

static struct vio_dev dev;
static struct vq rx, tx;
static uint8_t mac[6];
static uint32_t my_ip;
static int mrg, csum, quiet;
static uint32_t bufsize, rxbufs;
static uint64_t rx_addr[QSIZE];
static int tx_slot;
static int quitting;

static struct {
	uint32_t frames, arp, icmp, udp, other, dropped, needs_csum, merged, tx, bad_ip;
} count;

static uint16_t get16(const uint8_t *p) { return (uint16_t)(p[0] << 8 | p[1]); }
static uint32_t get32(const uint8_t *p) { return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3]; }
static void put16(uint8_t *p, uint16_t v) { p[0] = (uint8_t)(v >> 8); p[1] = (uint8_t)v; }
static void put32(uint8_t *p, uint32_t v) { put16(p, (uint16_t)(v >> 16)); put16(p + 2, (uint16_t)v); }

static uint32_t sum16(const uint8_t *p, uint32_t len, uint32_t sum)
{
	for (uint32_t i = 0; i + 1 < len; i += 2)
		sum += get16(p + i);
	if (len & 1)
		sum += (uint32_t)p[len - 1] << 8;
	return sum;
}

static uint16_t fold(uint32_t sum)
{
	while (sum >> 16)
		sum = (sum & 0xffff) + (sum >> 16);
	return (uint16_t)sum;
}

static uint32_t parse_ip(const char *text, uint32_t fallback)
{
	uint32_t ip = 0, part = 0, parts = 0;

	if (!text)
		return fallback;
	for (;; text++) {
		if (*text >= '0' && *text <= '9') {
			part = part * 10 + (uint32_t)(*text - '0');
		} else if (*text == '.' || *text == 0 || *text == ' ') {
			ip = ip << 8 | (part & 0xff);
			part = 0;
			parts++;
			if (*text != '.')
				break;
		} else {
			break;
		}
	}
	return parts == 4 ? ip : fallback;
}

/* --- the device ----------------------------------------------------------- */
static void post_rx(uint64_t addr)
{
	struct buf b = {addr, bufsize, 1};
	int head = vq_add(&rx, &b, 1);

	if (head < 0)
		fail("rx: no free descriptors");
	rx_addr[head] = addr;
}

static void kick_if_needed(struct vq *vq, uint16_t before)
{
	mb();
	if (!(dev.features & F_EVENT_IDX)) {
		if (!(vq->used[0] & 1))
			vq_kick(vq);
		return;
	}
	uint16_t event = vq_avail_event(vq), now = vq->avail_idx;
	if ((uint16_t)(now - event - 1) < (uint16_t)(now - before))
		vq_kick(vq);
}

static int setup(uint64_t wanted)
{
	if (!vio_negotiate(&dev, wanted))
		return 0;
	if (!vq_init(&rx, &dev, 0, QSIZE, RX_RING) || !vq_init(&tx, &dev, 1, QSIZE, TX_RING))
		fail("queues not ready");
	uint16_t before = rx.avail_idx;
	for (uint32_t i = 0; i < rxbufs; i++)
		post_rx(RX_AREA + (uint64_t)i * bufsize);
	vio_driver_ok(&dev);
	kick_if_needed(&rx, before);
	tx_slot = 0;
	return 1;
}

static void reclaim_tx(void)
{
	while (vq_used(&tx, 0) >= 0)
		;
}

/* Sends a frame from the next TX slot: the header and the frame in two
 * descriptors. `frame` may already lie in the slot (then it is not copied). */
static void send_frame(const uint8_t *frame, uint32_t len, const struct net_hdr *hdr)
{
	uint64_t slot = TX_AREA + TX_SLOT * (uint64_t)tx_slot;
	uint64_t deadline = rdtsc() + WAIT_US * tsc_per_us();

	tx_slot = (tx_slot + 1) % TX_SLOTS;
	reclaim_tx();
	while (tx.num_free < 2) {
		if (rdtsc() > deadline)
			fail("tx: the device does not return buffers");
		reclaim_tx();
	}
	memcpy((void *)(uintptr_t)slot, hdr, HDR_LEN);
	if (frame != (const uint8_t *)(uintptr_t)(slot + HDR_LEN))
		memcpy((void *)(uintptr_t)(slot + HDR_LEN), frame, len);
	struct buf bufs[2] = {{slot, HDR_LEN, 0}, {slot + HDR_LEN, len, 0}};
	uint16_t before = tx.avail_idx;
	if (vq_add(&tx, bufs, 2) < 0)
		fail("tx: no descriptors");
	kick_if_needed(&tx, before);
	count.tx++;
}

/* Where the next frame to send is built: the next TX slot, once fewer than
 * TX_SLOTS frames are in flight (so the slot's last frame went out). */
static uint8_t *reply_buffer(void)
{
	uint64_t deadline = rdtsc() + WAIT_US * tsc_per_us();

	reclaim_tx();
	while ((QSIZE - tx.num_free) / 2 >= TX_SLOTS - 1) {
		if (rdtsc() > deadline)
			fail("tx: the device does not return buffers");
		reclaim_tx();
	}
	return (uint8_t *)(uintptr_t)(TX_AREA + TX_SLOT * (uint64_t)tx_slot + HDR_LEN);
}

/* --- the protocols ----------------------------------------------------------- */
static void reply_ethernet(uint8_t *out, const uint8_t *in, uint16_t type)
{
	memcpy(out, in + 6, 6);
	memcpy(out + 6, mac, 6);
	put16(out + 12, type);
}

static void handle_arp(const uint8_t *frame, uint32_t len)
{
	const uint8_t *arp = frame + 14;

	if (len < 42 || get16(arp) != 1 || get16(arp + 2) != ETH_IP || get16(arp + 6) != 1
	    || get32(arp + 24) != my_ip) {
		count.other++;
		return;
	}
	uint8_t *out = reply_buffer();
	struct net_hdr hdr = {0};
	reply_ethernet(out, frame, ETH_ARP);
	memcpy(out + 14, arp, 6);                     /* hardware and protocol types and sizes */
	put16(out + 20, 2);                           /* reply */
	memcpy(out + 22, mac, 6);
	put32(out + 28, my_ip);
	memcpy(out + 32, arp + 8, 10);                /* the asker's address pair */
	send_frame(out, 42, &hdr);
	count.arp++;
}

/* The IP header of a reply to `ip` (source and destination swapped). */
static uint32_t reply_ip(uint8_t *out, const uint8_t *ip, uint32_t payload, uint8_t proto)
{
	uint32_t total = 20 + payload;

	out[0] = 0x45;
	out[1] = 0;
	put16(out + 2, (uint16_t)total);
	put16(out + 4, 0);
	put16(out + 6, 0x4000);                       /* don't fragment */
	out[8] = 64;
	out[9] = proto;
	put16(out + 10, 0);
	memcpy(out + 12, ip + 16, 4);
	memcpy(out + 16, ip + 12, 4);
	put16(out + 10, (uint16_t)~fold(sum16(out, 20, 0)));
	return total;
}

static void handle_icmp(const uint8_t *frame, const uint8_t *ip, uint32_t ihl, uint32_t total)
{
	const uint8_t *icmp = ip + ihl;
	uint32_t len = total - ihl;

	if (len < 8 || icmp[0] != 8 || icmp[1] != 0) {
		count.other++;
		return;
	}
	uint8_t *out = reply_buffer();
	struct net_hdr hdr = {0};
	reply_ethernet(out, frame, ETH_IP);
	reply_ip(out + 14, ip, len, PROTO_ICMP);
	uint8_t *reply = out + 34;
	memcpy(reply, icmp, len);
	reply[0] = 0;
	put16(reply + 2, 0);
	put16(reply + 2, (uint16_t)~fold(sum16(reply, len, 0)));
	send_frame(out, 34 + len, &hdr);
	count.icmp++;
	if (!quiet)
		print("icmp echo request id %u seq %u, %u bytes: replied\n", get16(icmp + 4), get16(icmp + 6), len);
}

static void send_udp(const uint8_t *frame, const uint8_t *ip, const uint8_t *udp, const uint8_t *data,
		     uint32_t len)
{
	uint8_t *out = reply_buffer();
	struct net_hdr hdr = {0};
	reply_ethernet(out, frame, ETH_IP);
	reply_ip(out + 14, ip, 8 + len, PROTO_UDP);
	uint8_t *reply = out + 34;
	put16(reply, get16(udp + 2));
	put16(reply + 2, get16(udp));
	put16(reply + 4, (uint16_t)(8 + len));
	put16(reply + 6, 0);
	memcpy(reply + 8, data, len);
	/* Pseudo-header: addresses, protocol, length. */
	uint32_t sum = sum16(out + 26, 8, 0) + PROTO_UDP + 8 + len;
	if (csum) {
		hdr.flags = NEEDS_CSUM;
		hdr.csum_start = 34;
		hdr.csum_offset = 6;
		put16(reply + 6, fold(sum));
	} else {
		uint16_t value = (uint16_t)~fold(sum16(reply, 8 + len, sum));
		put16(reply + 6, value ? value : 0xffff);
	}
	send_frame(out, 42 + len, &hdr);
}

static void handle_udp(const uint8_t *frame, const uint8_t *ip, uint32_t ihl, uint32_t total, uint32_t buffers)
{
	const uint8_t *udp = ip + ihl;
	uint32_t len = total - ihl;

	if (len < 8 || get16(udp + 4) < 8 || get16(udp + 4) > len) {
		count.other++;
		return;
	}
	len = get16(udp + 4) - 8u;
	uint16_t port = get16(udp + 2);
	if (port == ECHO_PORT) {
		send_udp(frame, ip, udp, udp + 8, len);
		count.udp++;
		if (!quiet)
			print("udp echo from port %u, %u bytes in %u buffers: replied\n", get16(udp), len, buffers);
	} else if (port == CONTROL_PORT && len == 4 && !memcmp(udp + 8, "quit", 4)) {
		send_udp(frame, ip, udp, (const uint8_t *)"bye", 3);
		quitting = 1;
	} else {
		count.other++;
	}
}

static void handle_frame(const uint8_t *frame, uint32_t len, uint32_t buffers)
{
	count.frames++;
	if (len < 14) {
		count.other++;
		return;
	}
	if (memcmp(frame, mac, 6) && memcmp(frame, "\xff\xff\xff\xff\xff\xff", 6)) {
		count.other++;
		return;
	}
	uint16_t type = get16(frame + 12);
	if (type == ETH_ARP) {
		handle_arp(frame, len);
		return;
	}
	const uint8_t *ip = frame + 14;
	if (type != ETH_IP || len < 34 || (ip[0] >> 4) != 4) {
		count.other++;
		return;
	}
	uint32_t ihl = (ip[0] & 15u) * 4, total = get16(ip + 2);
	if (ihl < 20 || total < ihl || 14 + total > len || fold(sum16(ip, ihl, 0)) != 0xffff) {
		count.bad_ip++;
		return;
	}
	if (get32(ip + 16) != my_ip || (get16(ip + 6) & 0x3fff)) {    /* not ours, or a fragment */
		count.other++;
		return;
	}
	if (ip[9] == PROTO_ICMP)
		handle_icmp(frame, ip, ihl, total);
	else if (ip[9] == PROTO_UDP)
		handle_udp(frame, ip, ihl, total, buffers);
	else
		count.other++;
}

/* Takes every frame the device returned, answers it, and gives the buffers
 * back; how many frames. */
static int poll_rx(void)
{
	uint32_t length;
	int frames = 0;
	uint16_t before = rx.avail_idx;
	int head;

	while ((head = vq_used(&rx, &length)) >= 0) {
		if (head >= QSIZE || length < HDR_LEN || length > bufsize)
			fail("rx: used entry head %d length %u", head, length);
		uint64_t addr = rx_addr[head];
		const struct net_hdr *hdr = (const struct net_hdr *)(uintptr_t)addr;
		uint32_t buffers = mrg ? hdr->num_buffers : 1;
		if (!buffers)
			fail("rx: num_buffers 0");
		if (hdr->flags & NEEDS_CSUM)
			count.needs_csum++;
		const uint8_t *frame = (const uint8_t *)(uintptr_t)(addr + HDR_LEN);
		uint32_t frame_len = length - HDR_LEN;
		uint64_t pieces[QSIZE];
		int npieces = 1;
		pieces[0] = addr;
		if (buffers > 1) {
			if (buffers > QSIZE)
				fail("rx: num_buffers %u", buffers);
			uint8_t *gather = (uint8_t *)(uintptr_t)FRAME_AREA;
			memcpy(gather, frame, frame_len);
			for (uint32_t i = 1; i < buffers; i++) {
				int more = vq_used(&rx, &length);
				if (more < 0 || more >= QSIZE || length > bufsize || frame_len + length > MAX_FRAME)
					fail("rx: buffer %u of %u missing or bad", i, buffers);
				pieces[npieces++] = rx_addr[more];
				memcpy(gather + frame_len, (const void *)(uintptr_t)rx_addr[more], length);
				frame_len += length;
			}
			frame = gather;
			count.merged++;
		}
		handle_frame(frame, frame_len, buffers);
		for (int i = 0; i < npieces; i++)
			post_rx(pieces[i]);
		frames++;
	}
	if (frames)
		kick_if_needed(&rx, before);
	return frames;
}

static void print_link(void)
{
	uint16_t status = mmio_read16(dev.base + REG_CONFIG + 6);

	print("link %s (status 0x%x)\n", status & 1 ? "up" : "down", status);
}

/* Serves frames until quit, or for `us` microseconds when not zero. */
static void serve(uint64_t us)
{
	uint64_t deadline = us ? rdtsc() + us * tsc_per_us() : 0;

	for (;;) {
		int work = poll_rx();
		reclaim_tx();
		if (dev.isr_bits & INT_CONFIG) {
			__asm__ volatile("cli");
			dev.isr_bits &= ~(uint32_t)INT_CONFIG;
			__asm__ volatile("sti");
			print_link();
		}
		if (quitting || (deadline && rdtsc() > deadline))
			return;
		if (work)
			continue;
		uint32_t seen = dev.irq_count;
		vq_set_used_event(&rx, rx.last_used);
		mb();
		if (rx.last_used != vq_used_idx(&rx))
			continue;
		wait_change(&dev.irq_count, seen, 100000);
	}
}

void guest_main(uint32_t multiboot_info);

void guest_main(uint32_t multiboot_info)
{
	guest_start(multiboot_info);
	my_ip = parse_ip(cmdline_value("ip"), 0x0a00020f);
	mrg = (int)cmdline_number("mrg", 1);
	csum = (int)cmdline_number("csum", 0);
	quiet = (int)cmdline_number("quiet", 0);
	bufsize = (uint32_t)cmdline_number("bufsize", mrg ? 2048 : 1526);
	rxbufs = (uint32_t)cmdline_number("rxbufs", 64);
	uint32_t resets = (uint32_t)cmdline_number("resets", 0);
	uint64_t reset_ms = cmdline_number("resetms", 20);
	if (bufsize < HDR_LEN || bufsize > 0x10000 || !rxbufs || rxbufs > QSIZE / 2)
		fail("bad parameters");
	if (!acpi_scan(&acpi))
		fail("no ACPI");
	find_device(&dev, 1, 0);
	dev.offered = vio_device_features(&dev);
	print("~ offered 0x%016lx\n", dev.offered);
	print("offered mac %d status %d mrg_rxbuf %d csum %d guest_csum %d host_tso4 %d guest_tso4 %d\n",
	      !!(dev.offered & F_MAC), !!(dev.offered & F_STATUS), !!(dev.offered & F_MRG_RXBUF),
	      !!(dev.offered & F_CSUM), !!(dev.offered & F_GUEST_CSUM), !!(dev.offered & F_HOST_TSO4),
	      !!(dev.offered & F_GUEST_TSO4));
	for (int i = 0; i < 6; i++)
		mac[i] = mmio_read8(dev.base + REG_CONFIG + (uint32_t)i);
	print("mac %02x:%02x:%02x:%02x:%02x:%02x\n", mac[0], mac[1], mac[2], mac[3], mac[4], mac[5]);
	uint64_t wanted = F_VERSION_1 | F_EVENT_IDX | F_MAC | F_STATUS | (mrg ? F_MRG_RXBUF : 0)
			  | (csum ? F_CSUM | F_GUEST_CSUM : 0);
	__asm__ volatile("sti");
	for (uint32_t i = 0; i < resets; i++) {
		/* Every other round without the options, as a second driver would. */
		if (!setup(i & 1 ? F_VERSION_1 | F_MAC : wanted))
			fail("reset round %u: FEATURES_OK refused", i);
		serve(reset_ms * 1000);
		if (!vio_reset(&dev))
			fail("reset round %u: the status does not read 0", i);
	}
	if (resets)
		print("~ %u resets done, %u frames seen\n", resets, count.frames);
	if (!setup(wanted))
		fail("FEATURES_OK refused");
	print("negotiated mrg_rxbuf %d csum %d guest_csum %d event_idx %d\n", !!(dev.features & F_MRG_RXBUF),
	      !!(dev.features & F_CSUM), !!(dev.features & F_GUEST_CSUM), !!(dev.features & F_EVENT_IDX));
	print_link();
	print("net ready ip %u.%u.%u.%u\n", my_ip >> 24, my_ip >> 16 & 0xff, my_ip >> 8 & 0xff, my_ip & 0xff);
	serve(0);
	/* The "bye" goes out before the guest does. */
	for (uint64_t deadline = rdtsc() + WAIT_US * tsc_per_us(); tx.num_free < QSIZE && rdtsc() < deadline;)
		reclaim_tx();
	print("icmp echo replies %u, udp echoes %u\n", count.icmp, count.udp);
	print("~ frames %u, arp replies %u, merged %u, needs_csum %u, other %u, bad ip %u, sent %u\n", count.frames,
	      count.arp, count.merged, count.needs_csum, count.other, count.bad_ip, count.tx);
	print("~ spurious interrupts %u\n", dev.spurious);
	print("net done\n");
	exit_guest(0);
}
