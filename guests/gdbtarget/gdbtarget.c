/*
 * gdbtarget.elf: a tiny long-mode guest for the gdb stub's tests, built
 * with -g -O0 so gdb can break at functions, print variables and step
 * line by line.
 *
 *   - add_square() is the function to break at;
 *   - the loop in guest_main() calls it for i = 1..10 (steps);
 *   - `total` ends as 385 (1^2 + ... + 10^2), `counter` as 10;
 *   - while `spin` is non-zero the guest spins (a debugger sets it to
 *     test Ctrl-C, then clears it);
 *   - it exits through isa-debug-exit with `exit_code` (42 unless a
 *     debugger changed it) when total is 385, else with 1:
 *     status (42 << 1) | 1 = 85.
 *
 * Runs about two thousand instructions: the PVM host emulates each one.
 */
#include <stdint.h>

#include "hw.h"

volatile uint64_t counter;
volatile uint64_t total;
volatile uint32_t spin;
volatile uint8_t exit_code = 42;

void guest_main(void);
uint64_t add_square(uint64_t sum, uint64_t i);

static inline void outb(uint16_t port, uint8_t v)
{
	__asm__ volatile("outb %0, %1" : : "a"(v), "Nd"(port));
}

__attribute__((noinline)) uint64_t add_square(uint64_t sum, uint64_t i)
{
	uint64_t square = i * i;

	return sum + square;
}

void guest_main(void)
{
	uint64_t sum = 0;

	for (uint64_t i = 1; i <= 10; i++) {
		sum = add_square(sum, i);
		counter = i;
	}
	total = sum;
	while (spin)
		counter++;
	outb(DEBUG_EXIT_PORT, total == 385 ? exit_code : 1);
	for (;;)
		__asm__ volatile("cli; hlt");
}
