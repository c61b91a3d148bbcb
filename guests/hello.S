/* hello.bin: print one line and stop.  The smallest end-to-end check. */
#include "guest32.h"

	GUEST32_HEAD main
main:
	GUEST32_PROLOGUE
	call	uart_init
	mov	$msg, %esi
	call	uart_puts
	jmp	vm_halt

	.section .rodata
msg:	.asciz	"Hello from a pyvmm guest!\n"	/* \n only: tests compare bytes */
