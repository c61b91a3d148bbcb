/*
 * Serial console, printing, exit, string helpers and the command line of
 * the virtio test guests.
 */
#include "guest.h"

void uart_init(void)
{
	outb(UART_IER, 0x00);
	outb(UART_LCR, 0x80);
	outb(UART_DLL, 0x01);
	outb(UART_DLM, 0x00);
	outb(UART_LCR, 0x03);
	outb(UART_FCR, 0xc7);
	outb(UART_MCR, 0x0b);
}

void putc_serial(char c)
{
	while (!(inb(UART_LSR) & UART_LSR_THRE))
		;
	outb(UART_THR, (uint8_t)c);
}

void puts_serial(const char *s)
{
	while (*s)
		putc_serial(*s++);
}

static void put_unsigned(uint64_t v, unsigned base, int width, char pad)
{
	char buf[24];
	int n = 0;

	do {
		buf[n++] = "0123456789abcdef"[v % base];
		v /= base;
	} while (v);
	while (n < width && n < (int)sizeof(buf))
		buf[n++] = pad;
	while (n)
		putc_serial(buf[--n]);
}

/* %s %c %d %u %x %lx %lu %ld and a zero-padded width (%08x); %% */
void vprint(const char *fmt, va_list args)
{
	for (; *fmt; fmt++) {
		if (*fmt != '%') {
			putc_serial(*fmt);
			continue;
		}
		fmt++;
		char pad = ' ';
		int width = 0, is_long = 0;
		if (*fmt == '0') {
			pad = '0';
			fmt++;
		}
		while (*fmt >= '0' && *fmt <= '9')
			width = width * 10 + (*fmt++ - '0');
		if (*fmt == 'l') {
			is_long = 1;
			fmt++;
		}
		switch (*fmt) {
		case 's': {
			const char *s = va_arg(args, const char *);
			puts_serial(s ? s : "(null)");
			break;
		}
		case 'c':
			putc_serial((char)va_arg(args, int));
			break;
		case 'd': {
			int64_t v = is_long ? va_arg(args, int64_t) : va_arg(args, int);
			if (v < 0) {
				putc_serial('-');
				v = -v;
			}
			put_unsigned((uint64_t)v, 10, width, pad);
			break;
		}
		case 'u':
			put_unsigned(is_long ? va_arg(args, uint64_t) : va_arg(args, unsigned), 10, width, pad);
			break;
		case 'x':
			put_unsigned(is_long ? va_arg(args, uint64_t) : va_arg(args, unsigned), 16, width, pad);
			break;
		case '%':
			putc_serial('%');
			break;
		default:
			putc_serial('?');
		}
	}
}

void print(const char *fmt, ...)
{
	va_list args;

	va_start(args, fmt);
	vprint(fmt, args);
	va_end(args);
}

void exit_guest(uint8_t code)
{
	outb(DEBUG_EXIT_PORT, code);
	for (;;)
		__asm__ volatile("cli; hlt");
}

void fail(const char *fmt, ...)
{
	va_list args;

	puts_serial("FAIL: ");
	va_start(args, fmt);
	vprint(fmt, args);
	va_end(args);
	putc_serial('\n');
	exit_guest(0x7f);
}

/* One string instruction each: guest kernel code is emulated on some hosts,
 * where every instruction saved counts. */
void *memset(void *dst, int c, size_t n)
{
	void *d = dst;

	__asm__ volatile("rep stosb" : "+D"(d), "+c"(n) : "a"(c) : "memory");
	return dst;
}

void *memcpy(void *dst, const void *src, size_t n)
{
	void *d = dst;

	__asm__ volatile("rep movsb" : "+D"(d), "+S"(src), "+c"(n) : : "memory");
	return dst;
}

int memcmp(const void *a, const void *b, size_t n)
{
	const uint8_t *x = a, *y = b;

	for (; n; n--, x++, y++)
		if (*x != *y)
			return *x - *y;
	return 0;
}

size_t strlen(const char *s)
{
	size_t n = 0;

	while (s[n])
		n++;
	return n;
}

int strncmp(const char *a, const char *b, size_t n)
{
	for (; n; n--, a++, b++) {
		if (*a != *b)
			return (uint8_t)*a - (uint8_t)*b;
		if (!*a)
			return 0;
	}
	return 0;
}

/* --- the multiboot command line: "path key=value key=value" ------------------ */
#define MB_INFO_CMDLINE (1u << 2)
static char cmdline[512];

void cmdline_init(uint32_t multiboot_info)
{
	const uint32_t *info = (const uint32_t *)(uintptr_t)multiboot_info;

	cmdline[0] = 0;
	if (!multiboot_info || !(info[0] & MB_INFO_CMDLINE) || !info[4])
		return;
	const char *text = (const char *)(uintptr_t)info[4];
	size_t n = 0;
	while (text[n] && n < sizeof(cmdline) - 1) {
		cmdline[n] = text[n];
		n++;
	}
	cmdline[n] = 0;
}

static char value_buffer[128];

const char *cmdline_value(const char *key)
{
	size_t length = strlen(key);
	const char *p = cmdline;

	while (*p) {
		while (*p == ' ')
			p++;
		if (!strncmp(p, key, length) && p[length] == '=') {
			p += length + 1;
			size_t n = 0;
			while (p[n] && p[n] != ' ' && n < sizeof(value_buffer) - 1) {
				value_buffer[n] = p[n];
				n++;
			}
			value_buffer[n] = 0;
			return value_buffer;
		}
		while (*p && *p != ' ')
			p++;
	}
	return NULL;
}

uint64_t cmdline_number(const char *key, uint64_t fallback)
{
	const char *text = cmdline_value(key);
	uint64_t value = 0;
	unsigned base = 10;

	if (!text || !*text)
		return fallback;
	if (text[0] == '0' && text[1] == 'x') {
		base = 16;
		text += 2;
	}
	for (; *text; text++) {
		unsigned digit;
		if (*text >= '0' && *text <= '9')
			digit = *text - '0';
		else if (base == 16 && *text >= 'a' && *text <= 'f')
			digit = *text - 'a' + 10;
		else
			return fallback;
		value = value * base + digit;
	}
	return value;
}

static uint64_t random_state = 0x9e3779b97f4a7c15ull;

void random_seed(uint64_t seed)
{
	random_state = seed ? seed : 0x9e3779b97f4a7c15ull;
}

uint64_t random_next(void)
{
	random_state ^= random_state >> 12;
	random_state ^= random_state << 25;
	random_state ^= random_state >> 27;
	return random_state * 0x2545f4914f6cdd1dull;
}
