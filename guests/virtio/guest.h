/*
 * The virtio test guests' runtime: port and MMIO access, the serial
 * console, printing, the exit device, the multiboot command line, ACPI
 * discovery (MADT IOAPICs, DSDT LNRO0005 devices), interrupts (IDT,
 * IOAPIC, local APIC and its timer) and the virtio-mmio driver (vio.h).
 *
 * Output convention: a line starting with "~ " holds a value that differs
 * between hosts by design (an IRQ number, a vendor ID); the differential
 * tests compare every other line exactly and check "~" lines per host.
 */
#ifndef VIRTIO_GUEST_H
#define VIRTIO_GUEST_H

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include "hw.h"

#define NOINLINE __attribute__((noinline))
#define NORETURN __attribute__((noreturn))
#define barrier() __asm__ volatile("" ::: "memory")
#define mb() __asm__ volatile("mfence" ::: "memory")

static inline void outb(uint16_t port, uint8_t v) { __asm__ volatile("outb %0, %1" : : "a"(v), "Nd"(port)); }
static inline uint8_t inb(uint16_t port)
{
	uint8_t v;
	__asm__ volatile("inb %1, %0" : "=a"(v) : "Nd"(port));
	return v;
}
static inline void outl(uint16_t port, uint32_t v) { __asm__ volatile("outl %0, %1" : : "a"(v), "Nd"(port)); }

static inline uint32_t mmio_read32(uintptr_t addr) { return *(volatile uint32_t *)addr; }
static inline void mmio_write32(uintptr_t addr, uint32_t v) { *(volatile uint32_t *)addr = v; }
static inline uint8_t mmio_read8(uintptr_t addr) { return *(volatile uint8_t *)addr; }
static inline void mmio_write8(uintptr_t addr, uint8_t v) { *(volatile uint8_t *)addr = v; }
static inline uint16_t mmio_read16(uintptr_t addr) { return *(volatile uint16_t *)addr; }
static inline uint64_t mmio_read64(uintptr_t addr) { return *(volatile uint64_t *)addr; }

static inline uint64_t rdtsc(void)
{
	uint32_t lo, hi;
	__asm__ volatile("rdtsc" : "=a"(lo), "=d"(hi));
	return (uint64_t)hi << 32 | lo;
}

/* lib.c */
void uart_init(void);
void putc_serial(char c);
void puts_serial(const char *s);
void print(const char *fmt, ...);
void vprint(const char *fmt, va_list args);
NORETURN void exit_guest(uint8_t code);
NORETURN void fail(const char *fmt, ...);
void *memset(void *dst, int c, size_t n);
void *memcpy(void *dst, const void *src, size_t n);
int memcmp(const void *a, const void *b, size_t n);
size_t strlen(const char *s);
int strncmp(const char *a, const char *b, size_t n);
void cmdline_init(uint32_t multiboot_info);
const char *cmdline_value(const char *key);          /* NULL when absent */
uint64_t cmdline_number(const char *key, uint64_t fallback);
uint64_t random_next(void);                           /* xorshift64*, seeded by seed= */
void random_seed(uint64_t seed);

/* acpi.c */
#define MAX_IOAPICS 4
#define MAX_VIRTIO_ACPI 24
struct ioapic { uint32_t address, gsi_base; };
struct acpi_virtio { uint32_t uid, base, size, irq; };
struct acpi_info {
	int ok;
	int ioapic_count;
	struct ioapic ioapics[MAX_IOAPICS];
	int virtio_count;
	struct acpi_virtio virtio[MAX_VIRTIO_ACPI];
};
int acpi_scan(struct acpi_info *info);               /* 0 when no RSDP */
const struct acpi_virtio *acpi_virtio_at(const struct acpi_info *info, uint32_t base);

/* intr.c */
#define VECTOR_TIMER 0x30
#define VECTOR_DEVICE 0x40                             /* + a small index */
#define VECTOR_SPURIOUS 0xff
typedef void (*irq_handler)(void *arg);
void interrupts_init(void);
int irq_route(const struct acpi_info *acpi, uint32_t gsi, int index, irq_handler fn, void *arg);
void irq_unroute(const struct acpi_info *acpi, uint32_t gsi);
/* Sleeps (sti; hlt) until *counter differs from `seen` or `timeout_us` passed; 1 if it changed. */
int wait_change(volatile uint32_t *counter, uint32_t seen, uint64_t timeout_us);
uint64_t tsc_per_us(void);
void delay_us(uint64_t us);

#endif
