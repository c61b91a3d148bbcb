/*
 * Helpers shared by the 32-bit guests, linked into each image.  Thin
 * callable wrappers around the macros in uart.h; hot loops use the macros
 * inline instead to avoid call overhead on an emulated CPU.
 */
#include "guest32.h"

#define RX_STASH_MAX	16		/* a 16550's receive FIFO depth */

	.text
	.code32

/*
 * The FIFO reset (FCR) drops whatever the UART has already received, on
 * a real 16550 and in QEMU alike, and tests feed input before the guest
 * runs.  So read out up to one FIFO's worth right before the reset, for
 * uart_getc to return first.  The rescue sits next to the FCR write
 * because a byte arriving in between is still lost.
 */
	.globl	uart_init
uart_init:
	UART_INIT_LINE
	push	%ecx
	xor	%ecx, %ecx
1:	cmp	$RX_STASH_MAX, %ecx	/* also bounds a floating bus (LSR=0xff) */
	jae	2f
	mov	$UART_LSR, %dx
	in	%dx, %al
	test	$UART_LSR_DR, %al
	jz	2f
	mov	$UART_RBR, %dx
	in	%dx, %al
	mov	%al, rx_stash(%ecx)
	inc	%ecx
	jmp	1b
2:	UART_INIT_FIFO
	mov	%ecx, rx_count
	movl	$0, rx_next
	pop	%ecx
	ret

	.globl	uart_putc
uart_putc:
	UART_PUTC
	ret

	.globl	uart_getc
uart_getc:
	mov	rx_next, %edx
	cmp	rx_count, %edx
	jae	1f
	movzbl	rx_stash(%edx), %eax	/* stashed by uart_init: oldest first */
	incl	rx_next
	ret
1:	UART_GETC
	ret

	.globl	uart_puts
uart_puts:
	lodsb
	test	%al, %al
	jz	1f
	call	uart_putc
	jmp	uart_puts
1:	ret

	.globl	vm_exit
vm_exit:
	out	%al, $DEBUG_EXIT_PORT
	/* fall through: the debug-exit device may be absent */
	.globl	vm_halt
vm_halt:
	VM_HALT

	.data
	.balign	4
rx_count:	.long	0
rx_next:	.long	0
rx_stash:	.space	RX_STASH_MAX
