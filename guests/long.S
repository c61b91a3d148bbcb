/*
 * long.bin: flat 64-bit guest at 0x100000.  Checks paging and
 * EFER.LMA are on, i.e. that we really run in long mode.
 */
#include "uart.h"

#define CR0_PG		0x80000000
#define MSR_EFER	0xc0000080
#define EFER_LMA	(1 << 10)

	.code64
	.text
	.globl	_start
_start:
	cli
	cld
	mov	$STACK_TOP, %esp	/* zero-extends into %rsp */

	UART_INIT
	lea	msg(%rip), %rsi
1:	lodsb
	test	%al, %al
	jz	2f
	UART_PUTC
	jmp	1b

2:	mov	%cr0, %rax
	test	$CR0_PG, %eax
	jz	fail
	mov	$MSR_EFER, %ecx
	rdmsr
	test	$EFER_LMA, %eax
	jz	fail
	VM_EXIT	0x30			/* status 0x61 */
fail:
	VM_EXIT	0x1f

	.section .rodata
msg:	.asciz	"long\n"
