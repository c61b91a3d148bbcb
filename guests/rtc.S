/*
 * rtc.bin: read the MC146818 RTC and CMOS RAM through ports 0x70/0x71.
 * Prints, one per line:
 *   status_b 0x%02x
 *   date YYYY-MM-DD              (century byte 0x32 and year; BCD decoded
 *   time hh:mm:ss                 unless status B selects binary)
 *   cmos_30 %u                   (0x30/0x31: KiB of RAM from 1 MiB up to 64 MiB)
 *   cmos_34 %u                   (0x34/0x35: 64 KiB units of RAM above 16 MiB)
 * then outb 0 -> 0xf4 (status 1).  It waits for status A's UIP bit to
 * clear before reading the clock, so the reads fall in one second.
 */
#include "guest32.h"

#define RTC_SECONDS	0x00
#define RTC_MINUTES	0x02
#define RTC_HOURS	0x04
#define RTC_DAY		0x07
#define RTC_MONTH	0x08
#define RTC_YEAR	0x09
#define RTC_STATUS_A	0x0a
#define RTC_STATUS_B	0x0b
#define RTC_CENTURY	0x32
#define CMOS_EXT_MEM	0x30		/* and 0x31 */
#define CMOS_HIGH_MEM	0x34		/* and 0x35 */
#define STATUS_A_UIP	0x80
#define STATUS_B_BINARY	0x04

/* %al = CMOS byte \index.  Clobbers %eax. */
.macro CMOS_READ index
	mov	$\index, %al
	out	%al, $CMOS_INDEX
	in	$CMOS_DATA, %al
.endm

/* Print the clock register \index, decoded, as 2 digits, then \sep. */
.macro CLOCK_FIELD index, sep
	CMOS_READ \index
	call	decode
	call	print2
	mov	$\sep, %al
	call	uart_putc
.endm

/* Print the 16-bit little-endian CMOS word at \index in decimal. */
.macro CMOS_WORD index
	CMOS_READ (\index + 1)
	movzbl	%al, %ebx
	shl	$8, %ebx
	CMOS_READ \index
	mov	%al, %bl
	mov	%ebx, %eax
	call	print_dec
	call	print_nl
.endm

	GUEST32_HEAD main
main:
	GUEST32_PROLOGUE
	call	uart_init
	PUTS	"status_b 0x"
	CMOS_READ RTC_STATUS_B
	mov	%al, status_b
	call	print_hex8

	mov	$1000000, %ecx		/* bounded: ~1 s of updates at most */
1:	CMOS_READ RTC_STATUS_A
	test	$STATUS_A_UIP, %al
	jz	2f
	loop	1b
2:	PUTS	"\ndate "
	CMOS_READ RTC_CENTURY
	call	decode
	call	print2
	CLOCK_FIELD RTC_YEAR, '-'
	CLOCK_FIELD RTC_MONTH, '-'
	CLOCK_FIELD RTC_DAY, '\n'
	PUTS	"time "
	CLOCK_FIELD RTC_HOURS, ':'
	CLOCK_FIELD RTC_MINUTES, ':'
	CLOCK_FIELD RTC_SECONDS, '\n'

	PUTS	"cmos_30 "
	CMOS_WORD CMOS_EXT_MEM
	PUTS	"cmos_34 "
	CMOS_WORD CMOS_HIGH_MEM
	mov	$0, %al
	jmp	vm_exit

/* %eax = the clock byte in %al as a binary number.  Clobbers %edx. */
decode:
	movzbl	%al, %eax
	testb	$STATUS_B_BINARY, status_b
	jnz	1f
	push	%ecx			/* BCD: tens * 10 + ones */
	mov	%eax, %ecx
	and	$0x0f, %ecx
	shr	$4, %eax
	imul	$10, %eax, %eax
	add	%ecx, %eax
	pop	%ecx
1:	ret

/* %eax (0-99) as exactly 2 decimal digits.  Clobbers %eax, %edx. */
print2:
	cmp	$10, %eax
	jae	1f
	push	%eax
	mov	$'0', %al
	call	uart_putc
	pop	%eax
1:	jmp	print_dec

	.data
status_b:	.byte	0
