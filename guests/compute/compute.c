/*
 * compute.elf: a long-mode guest doing real 64-bit arithmetic with a
 * result the host can check.  Prints
 *     fnv1a=0x%016lx sum=%lu\n
 * and exits through isa-debug-exit with (fnv1a & 0x7f).
 * The expected values are in README.md.
 *
 * Built with -mgeneral-regs-only: the loader need not enable SSE.
 */
#include <stdint.h>

#include "hw.h"

#define FNV_OFFSET      0xcbf29ce484222325ull
#define FNV_PRIME       0x100000001b3ull
#define PATTERN_LEN     4096
#define CUBES_N         10000

/*
 * An empty asm that "may change" x: stops gcc folding a loop into a
 * constant or a closed form, so the work really happens in the guest.
 */
#define OPAQUE(x)       __asm__ volatile("" : "+r"(x))

static inline void outb(uint16_t port, uint8_t v)
{
	__asm__ volatile("outb %0, %1" : : "a"(v), "Nd"(port));
}

static inline uint8_t inb(uint16_t port)
{
	uint8_t v;

	__asm__ volatile("inb %1, %0" : "=a"(v) : "Nd"(port));
	return v;
}

/* Same register sequence as UART_INIT in uart.h. */
static void uart_init(void)
{
	outb(UART_IER, 0x00);
	outb(UART_LCR, 0x80);
	outb(UART_DLL, 0x01);
	outb(UART_DLM, 0x00);
	outb(UART_LCR, 0x03);
	outb(UART_FCR, 0xc7);
	outb(UART_MCR, 0x0b);
}

static void uart_putc(char c)
{
	while (!(inb(UART_LSR) & UART_LSR_THRE))
		;
	outb(UART_THR, (uint8_t)c);
}

static void uart_puts(const char *s)
{
	while (*s)
		uart_putc(*s++);
}

/* %016lx */
static void put_hex64(uint64_t v)
{
	for (int shift = 60; shift >= 0; shift -= 4)
		uart_putc("0123456789abcdef"[(v >> shift) & 0xf]);
}

/* %lu */
static void put_dec64(uint64_t v)
{
	char buf[20];           /* 2^64 - 1 has 20 digits */
	int n = 0;

	do {
		buf[n++] = (char)('0' + v % 10);
		v /= 10;
	} while (v);
	while (n)
		uart_putc(buf[--n]);
}

/* 64-bit FNV-1a over b[i] = (i * 7 + 3) & 0xff, i < len. */
static uint64_t fnv1a_pattern(uint32_t len)
{
	uint64_t h = FNV_OFFSET;

	for (uint32_t i = 0; i < len; i++) {
		h ^= (i * 7 + 3) & 0xff;
		h *= FNV_PRIME;
		OPAQUE(h);
	}
	return h;
}

/* Sum of i^3 for i < n, in u64. */
static uint64_t sum_cubes(uint64_t n)
{
	uint64_t sum = 0;

	for (uint64_t i = 0; i < n; i++) {
		sum += i * i * i;
		OPAQUE(sum);
	}
	return sum;
}

void guest_main(void);

void guest_main(void)
{
	uint64_t h = fnv1a_pattern(PATTERN_LEN);
	uint64_t s = sum_cubes(CUBES_N);

	uart_init();
	uart_puts("fnv1a=0x");
	put_hex64(h);
	uart_puts(" sum=");
	put_dec64(s);
	uart_puts("\n");
	outb(DEBUG_EXIT_PORT, (uint8_t)(h & 0x7f));
}
