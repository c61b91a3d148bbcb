/*
 * dirty_pages.elf: the reset benchmark's guest (bench/reset), on the same
 * user-mode entry and park protocol as fuzz_target.elf. Its input is a u32
 * n (at most PAGES): it writes one byte to each of n pages of its own, then
 * parks with n, so a reset after it has n pages (and the input's page) to
 * copy back.
 */
#include <stdint.h>

#define PARK_MMIO 0xe0000000u
#define PAGES 256

struct descriptor {
	uint64_t buffer;
	uint32_t capacity;
	uint32_t length;
};

static struct descriptor descriptor;
static uint32_t input[4];
static uint8_t area[PAGES][4096] __attribute__((aligned(4096)));

static void park(uint32_t value)
{
	*(volatile uint32_t *)(uintptr_t)PARK_MMIO = value;
	__asm__ volatile("" : : : "memory");
}

void user_main(void)
{
	descriptor.buffer = (uint64_t)(uintptr_t)input;
	descriptor.capacity = sizeof(input);
	for (;;) {
		descriptor.length = 0;
		park((uint32_t)(uintptr_t)&descriptor);
		uint32_t pages = descriptor.length >= 4 && input[0] < PAGES ? input[0] : PAGES;
		for (uint32_t i = 0; i < pages; i++)
			*(volatile uint8_t *)&area[i][i % 4096] = (uint8_t)(i + 1);
		park(pages);
	}
}
