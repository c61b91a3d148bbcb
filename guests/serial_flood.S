/*
 * serial_flood.bin: write N bytes to the UART, polling LSR before each
 * as a real driver would; for a serial throughput benchmark.  N is the
 * dword at image offset 0x24 (param_n).  Byte k of the output is
 * line[k % 64], line = 63 characters of "0123456789abcdef" repeated,
 * then '\n'.
 */
#include "guest32.h"

	GUEST32_HEAD main
	.globl	param_n
param_n:
	.long	1048576
main:
	GUEST32_PROLOGUE
	call	uart_init
	mov	param_n, %ecx
	xor	%ebx, %ebx		/* k */
	jecxz	2f
1:	mov	%ebx, %esi
	and	$63, %esi
	mov	line(%esi), %al
	UART_PUTC			/* inline: this is the hot loop */
	inc	%ebx
	dec	%ecx
	jnz	1b
2:	xor	%al, %al		/* status 1 */
	jmp	vm_exit

	.section .rodata
line:	.ascii	"0123456789abcdef0123456789abcdef"
	.ascii	"0123456789abcdef0123456789abcde\n"
