/*
 * triple_real.bin: a triple fault in real mode.  Loaded and entered at
 * 0x7c00 (a 512-byte boot sector too, for QEMU's BIOS).
 *
 * Prints "real triple fault\n", loads an interrupt table with limit 0 and
 * raises int $3: the vector lies outside the table (#GP), so does #GP's
 * (#DF), and so does #DF's: the CPU shuts down.  pyvmm reports the
 * shutdown as a crash (status 125); QEMU with -no-reboot exits, logging
 * "Triple fault" with -d cpu_reset.  Should the int return, it ends with
 * outb 0x1f (status 0x3f).
 */
#include "uart.h"

	.code16
	.text
	.globl	_start
_start:
	cli
	cld
	ljmp	$0, $1f			/* normalise CS:IP to 0000:7cxx */
1:	xor	%ax, %ax
	mov	%ax, %ds
	mov	%ax, %es
	mov	%ax, %ss
	mov	$STACK_TOP, %sp

	UART_INIT
	mov	$msg, %si
2:	lodsb
	test	%al, %al
	jz	3f
	UART_PUTC
	jmp	2b

3:	lidt	empty_idt
	int	$3
	VM_EXIT	0x1f

empty_idt:
	.word	0			/* limit 0: no vector fits */
	.long	0
msg:	.asciz	"real triple fault\n"

	.org	510
	.word	0xaa55
