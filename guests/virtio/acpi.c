/*
 * ACPI discovery, as little as a virtio-mmio driver needs: the IOAPICs
 * from the MADT (address, first GSI) and the virtio-mmio transports from
 * the DSDT's LNRO0005 devices (_UID, _CRS: Memory32Fixed and Interrupt).
 * The DSDT is not interpreted: the scanner finds each "LNRO0005" string
 * and reads the _UID and _CRS objects that follow it, which is how both
 * QEMU's microvm and pyvmm lay them out.
 */
#include "guest.h"

static int checksum_ok(const uint8_t *p, uint32_t length)
{
	uint8_t sum = 0;

	for (uint32_t i = 0; i < length; i++)
		sum += p[i];
	return sum == 0;
}

static const uint8_t *find_rsdp(void)
{
	for (uintptr_t addr = 0xe0000; addr < 0x100000; addr += 16) {
		const uint8_t *p = (const uint8_t *)addr;
		if (!memcmp(p, "RSD PTR ", 8) && checksum_ok(p, 20))
			return p;
	}
	return NULL;
}

static uint32_t u32_at(const uint8_t *p) { return p[0] | p[1] << 8 | p[2] << 16 | (uint32_t)p[3] << 24; }
static uint64_t u64_at(const uint8_t *p) { return u32_at(p) | (uint64_t)u32_at(p + 4) << 32; }

static void parse_madt(const uint8_t *madt, struct acpi_info *info)
{
	uint32_t length = u32_at(madt + 4);

	for (uint32_t offset = 44; offset + 2 <= length;) {
		uint8_t type = madt[offset], size = madt[offset + 1];
		if (size < 2)
			break;
		if (type == 1 && size >= 12 && info->ioapic_count < MAX_IOAPICS) {
			struct ioapic *ioapic = &info->ioapics[info->ioapic_count++];
			ioapic->address = u32_at(madt + offset + 4);
			ioapic->gsi_base = u32_at(madt + offset + 8);
		}
		offset += size;
	}
}

/* An AML integer at p (ZeroOp, OneOp, Byte/Word/DWordPrefix); -1 if not one. */
static int64_t aml_integer(const uint8_t *p)
{
	switch (p[0]) {
	case 0x00: return 0;
	case 0x01: return 1;
	case 0x0a: return p[1];
	case 0x0b: return p[1] | p[2] << 8;
	case 0x0c: return u32_at(p + 1);
	default: return -1;
	}
}

static int aml_integer_size(const uint8_t *p)
{
	switch (p[0]) {
	case 0x0a: return 2;
	case 0x0b: return 3;
	case 0x0c: return 5;
	default: return 1;
	}
}

static const uint8_t *find_bytes(const uint8_t *from, const uint8_t *end, const char *what, size_t n)
{
	for (const uint8_t *p = from; p + n <= end; p++)
		if (!memcmp(p, what, n))
			return p;
	return NULL;
}

static void parse_virtio_device(const uint8_t *hid, const uint8_t *end, struct acpi_info *info)
{
	const uint8_t *window = hid + 160 < end ? hid + 160 : end;
	const uint8_t *uid = find_bytes(hid, window, "_UID", 4);
	const uint8_t *crs = find_bytes(hid, window, "_CRS", 4);
	struct acpi_virtio device = {0};

	if (!uid || !crs || info->virtio_count >= MAX_VIRTIO_ACPI)
		return;
	int64_t value = aml_integer(uid + 4);
	if (value < 0)
		return;
	device.uid = (uint32_t)value;
	const uint8_t *p = crs + 4;
	if (*p++ != 0x11)                       /* BufferOp */
		return;
	p += (*p >> 6) + 1;                     /* PkgLength */
	p += aml_integer_size(p);               /* buffer size */
	while (p < window && *p != 0x79) {      /* up to the End Tag */
		if (!(*p & 0x80))
			return;                 /* small items other than the end: not ours */
		uint16_t length = p[1] | p[2] << 8;
		if (p[0] == 0x86 && length == 9) {
			device.base = u32_at(p + 4);
			device.size = u32_at(p + 8);
		} else if (p[0] == 0x89 && length >= 6 && p[4] >= 1) {
			device.irq = u32_at(p + 5);
		}
		p += 3 + length;
	}
	if (device.base)
		info->virtio[info->virtio_count++] = device;
}

static void parse_dsdt(const uint8_t *dsdt, struct acpi_info *info)
{
	const uint8_t *end = dsdt + u32_at(dsdt + 4);

	for (const uint8_t *p = dsdt + 36; (p = find_bytes(p, end, "LNRO0005", 8)); p += 8)
		parse_virtio_device(p, end, info);
}

static void parse_table(const uint8_t *table, struct acpi_info *info)
{
	if (!checksum_ok(table, u32_at(table + 4)))
		return;
	if (!memcmp(table, "APIC", 4)) {
		parse_madt(table, info);
	} else if (!memcmp(table, "FACP", 4)) {
		uint32_t length = u32_at(table + 4);
		uint64_t dsdt = length >= 148 ? u64_at(table + 140) : 0;
		if (!dsdt)
			dsdt = u32_at(table + 40);
		const uint8_t *p = (const uint8_t *)(uintptr_t)dsdt;
		if (dsdt && !memcmp(p, "DSDT", 4) && checksum_ok(p, u32_at(p + 4)))
			parse_dsdt(p, info);
	}
}

int acpi_scan(struct acpi_info *info)
{
	memset(info, 0, sizeof(*info));
	const uint8_t *rsdp = find_rsdp();
	if (!rsdp)
		return 0;
	uint64_t xsdt = rsdp[15] >= 2 ? u64_at(rsdp + 24) : 0;
	const uint8_t *root = (const uint8_t *)(uintptr_t)(xsdt ? xsdt : u32_at(rsdp + 16));
	unsigned entry = xsdt ? 8 : 4;
	uint32_t length = u32_at(root + 4);

	for (uint32_t offset = 36; offset + entry <= length; offset += entry) {
		uint64_t addr = entry == 8 ? u64_at(root + offset) : u32_at(root + offset);
		parse_table((const uint8_t *)(uintptr_t)addr, info);
	}
	info->ok = 1;
	return 1;
}

const struct acpi_virtio *acpi_virtio_at(const struct acpi_info *info, uint32_t base)
{
	for (int i = 0; i < info->virtio_count; i++)
		if (info->virtio[i].base == base)
			return &info->virtio[i];
	return NULL;
}
