/*
 * prot.bin: confirm we were entered in 32-bit protected mode without
 * paging, and say so through the exit status.
 */
#include "guest32.h"

#define CR0_PE		0x00000001
#define CR0_PG		0x80000000

	GUEST32_HEAD main
main:
	GUEST32_PROLOGUE
	call	uart_init
	mov	$msg, %esi
	call	uart_puts
	mov	%cr0, %ebx
	and	$(CR0_PE | CR0_PG), %ebx
	mov	$0x1f, %al		/* failure */
	cmp	$CR0_PE, %ebx
	jne	1f
	mov	$0x20, %al		/* success: status 0x41 */
1:	jmp	vm_exit

	.section .rodata
msg:	.asciz	"protected\n"
