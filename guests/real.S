/*
 * real.bin: 16-bit real-mode guest loaded and entered at 0x7c00.  Checks
 * CR0.PE is clear and reports through the exit status.
 *
 * It is also a valid boot sector (512 bytes, 0xaa55 at the end), so QEMU
 * can boot it from a raw disk image and the same bytes can be tested
 * without pyvmm.  BIOSes differ in CS:IP and segment setup, hence the
 * far jump and segment loads, which are no-ops under pyvmm.
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

3:	smsw	%ax			/* low word of CR0; works in any mode */
	test	$1, %al			/* CR0.PE */
	jnz	fail
	VM_EXIT	0x10			/* status 0x21 */
fail:
	VM_EXIT	0x1f

msg:	.asciz	"real\n"

	.org	510			/* errors out if the code outgrows a sector */
	.word	0xaa55
