/*
 * fuzz_target.elf: the bundled target of pyvmm.testing's snapshot fuzzing
 * (pyvmm/testing/snapshot_fuzz.py), a tiny parser of type-length-value
 * records run in user mode (entry.S).
 *
 * Protocol, through the harness's park register (32-bit writes at MMIO
 * 0xe0000000; a kernel-mode guest may use port 0x5f0 instead):
 *   1. it writes the address of its input descriptor {u64 buffer; u32
 *      capacity; u32 length} there and parks: the harness checkpoints;
 *   2. per example, the harness writes the input into the buffer and its
 *      length into the descriptor, and lets it run;
 *   3. it parses the input and parks again with the result (a checksum).
 *
 * Input: records of a type byte, a length byte and that many value bytes
 * (fewer if the input ends first). Type 0 ends the input; types 1-15 fold
 * the value into the checksum, each its own way (a table of handlers);
 * types above 16 are skipped. The planted bug: the bound check lets type 16
 * through, one past the table, to a null handler: the call faults, and with
 * no IDT the guest triple-faults (pyvmm: a crash, status 125).
 * tests/kvm/test_snapshot_fuzz.py has the same parser in Python.
 */
#include <stdint.h>

#define PARK_MMIO 0xe0000000u
#define CAPACITY 512

typedef uint32_t (*handler)(uint32_t checksum, const uint8_t *value, uint32_t length);

struct descriptor {
	uint64_t buffer;
	uint32_t capacity;
	uint32_t length;
};

static struct descriptor descriptor;
static uint8_t buffer[CAPACITY];

/* The host changes memory while we are parked: nothing read before it holds after. */
static void park(uint32_t value)
{
	*(volatile uint32_t *)(uintptr_t)PARK_MMIO = value;
	__asm__ volatile("" : : : "memory");
}

static uint32_t sum(uint32_t checksum, const uint8_t *value, uint32_t length)
{
	for (uint32_t i = 0; i < length; i++)
		checksum += value[i];
	return checksum;
}

static uint32_t fnv(uint32_t checksum, const uint8_t *value, uint32_t length)
{
	for (uint32_t i = 0; i < length; i++)
		checksum = (checksum ^ value[i]) * 16777619u;
	return checksum;
}

static uint32_t rotate(uint32_t checksum, const uint8_t *value, uint32_t length)
{
	(void)value;
	length &= 31;
	return length ? (checksum << length) | (checksum >> (32 - length)) : checksum;
}

/* The table, then a null pointer: what index 16 finds. */
static const struct {
	handler table[16];
	handler past_the_end;
} handlers = {
	{ 0, sum, fnv, rotate, sum, fnv, rotate, sum, fnv, rotate, sum, fnv, rotate, sum, fnv, rotate },
	0,
};

static uint32_t parse(const uint8_t *input, uint32_t length)
{
	const handler *table = (const handler *)&handlers;
	uint32_t checksum = 0x811c9dc5u;
	uint32_t at = 0;

	while (at + 2 <= length) {
		uint32_t type = input[at], size = input[at + 1];
		const uint8_t *value = input + at + 2;

		at += 2;
		if (size > length - at)
			size = length - at;
		at += size;
		if (type == 0)
			break;
		if (type > 16)			/* the bug: should be >= 16 */
			continue;
		checksum = table[type](checksum ^ type, value, size);
	}
	return checksum;
}

void user_main(void)
{
	descriptor.buffer = (uint64_t)(uintptr_t)buffer;
	descriptor.capacity = CAPACITY;
	for (;;) {
		descriptor.length = 0;
		park((uint32_t)(uintptr_t)&descriptor);
		park(parse(buffer, descriptor.length < CAPACITY ? descriptor.length : CAPACITY));
	}
}
