/*
 * Interrupts for the virtio test guests: a 64-bit IDT whose exception
 * vectors print and exit, device vectors routed through the IOAPIC that
 * owns a GSI (level-triggered, active high, to this CPU), the local APIC
 * (EOI) and its timer, which bounds every wait: a guest sleeps in hlt
 * until its device interrupts or the timer does.
 *
 * The APIC timer counts at 1 GHz with divide-by-1 under both KVM and
 * QEMU's TCG, so a count is a nanosecond.
 */
#include "guest.h"

#define LAPIC LAPIC_BASE
#define LAPIC_ID_REG 0x20
#define LAPIC_TPR 0x80
#define LAPIC_EOI 0xb0
#define LAPIC_SVR 0xf0
#define LAPIC_LVT_TIMER 0x320
#define LAPIC_TIMER_INITIAL 0x380
#define LAPIC_TIMER_CURRENT 0x390
#define LAPIC_TIMER_DIVIDE 0x3e0
#define LVT_MASKED (1u << 16)
#define IOAPIC_SELECT 0x00
#define IOAPIC_WINDOW 0x10
#define IOAPIC_VERSION 0x01
#define REDIRECT_LEVEL (1u << 15)
#define REDIRECT_MASKED (1u << 16)
#define MAX_HANDLERS 16

struct idt_entry {
	uint16_t offset_low, selector;
	uint8_t ist, type;
	uint16_t offset_mid;
	uint32_t offset_high, reserved;
} __attribute__((packed));

extern char interrupt_stubs[];
static struct idt_entry idt[256] __attribute__((aligned(16)));
static struct { irq_handler fn; void *arg; } handlers[MAX_HANDLERS];
static uint64_t tsc_rate;

static void lapic_write(uint32_t reg, uint32_t v) { mmio_write32(LAPIC + reg, v); }
static uint32_t lapic_read(uint32_t reg) { return mmio_read32(LAPIC + reg); }

void interrupt_entry(uint64_t vector);

void interrupt_entry(uint64_t vector)
{
	if (vector < 32) {
		print("exception %u\n", (unsigned)vector);
		exit_guest(0x7e);
	}
	if (vector == VECTOR_TIMER) {
		/* nothing: it woke the CPU up */
	} else if (vector >= VECTOR_DEVICE && vector < VECTOR_DEVICE + MAX_HANDLERS) {
		int index = (int)(vector - VECTOR_DEVICE);
		if (handlers[index].fn)
			handlers[index].fn(handlers[index].arg);
	} else if (vector == VECTOR_SPURIOUS) {
		return;                         /* no EOI for a spurious interrupt */
	}
	lapic_write(LAPIC_EOI, 0);
}

void interrupts_init(void)
{
	struct { uint16_t limit; uint64_t base; } __attribute__((packed)) pointer;

	for (int vector = 0; vector < 256; vector++) {
		uint64_t handler = (uint64_t)(uintptr_t)(interrupt_stubs + 16 * vector);
		idt[vector] = (struct idt_entry){
			.offset_low = (uint16_t)handler, .selector = 0x08, .ist = 0, .type = 0x8e,
			.offset_mid = (uint16_t)(handler >> 16), .offset_high = (uint32_t)(handler >> 32),
		};
	}
	pointer.limit = sizeof(idt) - 1;
	pointer.base = (uint64_t)(uintptr_t)idt;
	__asm__ volatile("lidt %0" : : "m"(pointer));
	outb(PIC1_DATA, 0xff);                  /* the 8259s stay masked */
	outb(PIC2_DATA, 0xff);
	lapic_write(LAPIC_SVR, 0x100 | VECTOR_SPURIOUS);
	lapic_write(LAPIC_TPR, 0);
	lapic_write(LAPIC_TIMER_DIVIDE, 0xb);   /* divide by 1 */
	lapic_write(LAPIC_LVT_TIMER, LVT_MASKED | VECTOR_TIMER);
}

static const struct ioapic *ioapic_for(const struct acpi_info *acpi, uint32_t gsi, uint32_t *pin)
{
	for (int i = 0; i < acpi->ioapic_count; i++) {
		const struct ioapic *ioapic = &acpi->ioapics[i];
		mmio_write32(ioapic->address + IOAPIC_SELECT, IOAPIC_VERSION);
		uint32_t pins = ((mmio_read32(ioapic->address + IOAPIC_WINDOW) >> 16) & 0xff) + 1;
		if (gsi >= ioapic->gsi_base && gsi < ioapic->gsi_base + pins) {
			*pin = gsi - ioapic->gsi_base;
			return ioapic;
		}
	}
	return NULL;
}

static void redirect(const struct ioapic *ioapic, uint32_t pin, uint32_t low, uint32_t high)
{
	mmio_write32(ioapic->address + IOAPIC_SELECT, 0x10 + 2 * pin + 1);
	mmio_write32(ioapic->address + IOAPIC_WINDOW, high);
	mmio_write32(ioapic->address + IOAPIC_SELECT, 0x10 + 2 * pin);
	mmio_write32(ioapic->address + IOAPIC_WINDOW, low);
}

int irq_route(const struct acpi_info *acpi, uint32_t gsi, int index, irq_handler fn, void *arg)
{
	uint32_t pin;
	const struct ioapic *ioapic = ioapic_for(acpi, gsi, &pin);

	if (!ioapic || index < 0 || index >= MAX_HANDLERS)
		return -1;
	handlers[index].fn = fn;
	handlers[index].arg = arg;
	uint32_t apic_id = lapic_read(LAPIC_ID_REG) >> 24;
	redirect(ioapic, pin, (uint32_t)(VECTOR_DEVICE + index) | REDIRECT_LEVEL, apic_id << 24);
	return 0;
}

void irq_unroute(const struct acpi_info *acpi, uint32_t gsi)
{
	uint32_t pin;
	const struct ioapic *ioapic = ioapic_for(acpi, gsi, &pin);

	if (ioapic)
		redirect(ioapic, pin, REDIRECT_MASKED, 0);
}

int wait_change(volatile uint32_t *counter, uint32_t seen, uint64_t timeout_us)
{
	/* Against the TSC: a timer interrupt only wakes the CPU up, it is not
	 * counted, since a stale one (or one kvm_pvm delivers twice) would cut
	 * the wait short. */
	uint64_t rate = tsc_per_us();
	uint64_t deadline = rdtsc() + timeout_us * rate;

	__asm__ volatile("cli");
	while (*counter == seen) {
		uint64_t now = rdtsc();
		if (now >= deadline)
			break;
		uint64_t ns = (deadline - now) * 1000 / rate + 1;
		lapic_write(LAPIC_LVT_TIMER, VECTOR_TIMER);         /* one-shot */
		lapic_write(LAPIC_TIMER_INITIAL, ns > 0xffffffffu ? 0xffffffffu : (uint32_t)ns);
		__asm__ volatile("sti; hlt; cli" ::: "memory");
	}
	lapic_write(LAPIC_TIMER_INITIAL, 0);
	lapic_write(LAPIC_LVT_TIMER, LVT_MASKED | VECTOR_TIMER);
	return *counter != seen;
}

uint64_t tsc_per_us(void)
{
	if (!tsc_rate) {
		/* 10 ms of the 1 GHz APIC timer against the TSC. */
		lapic_write(LAPIC_LVT_TIMER, LVT_MASKED | VECTOR_TIMER);
		lapic_write(LAPIC_TIMER_INITIAL, 10000000);
		uint64_t start = rdtsc();
		while (lapic_read(LAPIC_TIMER_CURRENT))
			;
		tsc_rate = (rdtsc() - start) / 10000;
		if (!tsc_rate)
			tsc_rate = 1;
	}
	return tsc_rate;
}

void delay_us(uint64_t us)
{
	uint32_t seen = 0;
	volatile uint32_t never = 0;

	wait_change(&never, seen, us);
}
