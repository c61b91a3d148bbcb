/* echo.bin: copy UART input back to the UART until EOT (0x04). */
#include "guest32.h"

#define EOT	0x04

	GUEST32_HEAD main
main:
	GUEST32_PROLOGUE
	call	uart_init
1:	call	uart_getc
	cmp	$EOT, %al		/* the terminator itself is not echoed */
	je	2f
	call	uart_putc
	jmp	1b
2:	mov	$bye, %esi
	call	uart_puts
	jmp	vm_halt

	.section .rodata
bye:	.asciz	"\nbye\n"
