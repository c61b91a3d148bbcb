/*
 * Helpers shared by the 32-bit guests, linked into each image.  Thin
 * callable wrappers around the macros in uart.h; hot loops use the macros
 * inline instead to avoid call overhead on an emulated CPU.
 */
#include "guest32.h"

#define RX_STASH_MAX	64		/* bytes of early input kept */
#define RX_QUIET_TSC	50000000	/* ~10-20 ms: input has stopped coming */
#define RX_PAUSE_TSC	100000		/* ~30-50 us between LSR polls */

	.text
	.code32

/*
 * The FIFO reset (FCR) drops whatever the UART has already received, on
 * a real 16550 and in QEMU alike, and tests feed input before the guest
 * runs.  So just before the reset, read out what has arrived, for
 * uart_getc to return first.
 * A UART without its FIFO enabled holds one byte, and the next comes only
 * some time after that one is read; so once anything was pending, keep
 * collecting until the line has been quiet for RX_QUIET_TSC cycles.  Poll
 * slowly meanwhile: under QEMU/TCG, back-to-back port reads starve the
 * thread that delivers the next byte.  No input pending (the usual case)
 * costs one LSR read.  The reset follows the last poll within a few
 * instructions (not a pause: QEMU lost a byte in that window on a busy
 * host), but a byte landing between the two is still lost; so is input
 * beyond RX_STASH_MAX.
 */
	.globl	uart_init
uart_init:
	UART_INIT_LINE
	push	%ecx
	push	%esi
	push	%edi
	xor	%ecx, %ecx		/* bytes stashed */
1:	rdtsc				/* start of a quiet period */
	mov	%eax, %esi
2:	mov	$UART_LSR, %dx
	in	%dx, %al
	test	$UART_LSR_DR, %al
	jnz	3f
	jecxz	4f			/* nothing was pending: don't wait */
	rdtsc
	mov	%eax, %edi
	sub	%esi, %eax		/* TSC deltas mod 2^32: waits are short */
	cmp	$RX_QUIET_TSC, %eax
	jae	4f			/* quiet: reset right after this last poll */
5:	pause
	rdtsc
	sub	%edi, %eax
	cmp	$RX_PAUSE_TSC, %eax
	jb	5b
	jmp	2b
3:	cmp	$RX_STASH_MAX, %ecx	/* also bounds a floating bus (LSR=0xff) */
	jae	4f
	mov	$UART_RBR, %dx
	in	%dx, %al
	mov	%al, rx_stash(%ecx)
	inc	%ecx
	jmp	1b
4:	UART_INIT_FIFO
	mov	%ecx, rx_count
	movl	$0, rx_next
	pop	%edi
	pop	%esi
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

/* Same order as uart_getc, but returns CF=1 at once when nothing is there. */
	.globl	uart_trygetc
uart_trygetc:
	mov	rx_next, %edx
	cmp	rx_count, %edx
	jae	1f
	movzbl	rx_stash(%edx), %eax
	incl	rx_next
	clc
	ret
1:	mov	$UART_LSR, %dx
	in	%dx, %al
	test	$UART_LSR_DR, %al
	stc
	jz	2f
	mov	$UART_RBR, %dx
	in	%dx, %al
	clc
2:	ret

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
