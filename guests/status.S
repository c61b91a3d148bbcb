/*
 * status.bin: read a decimal number from the UART and exit with it, so a
 * test can choose the exit status.  Prints nothing.
 */
#include "guest32.h"

	GUEST32_HEAD main
main:
	GUEST32_PROLOGUE
	call	uart_init
	xor	%ebx, %ebx		/* value so far; wraps mod 2^32 */
next:
	call	uart_getc
	cmp	$'\r', %al		/* tolerate CRLF from a terminal */
	je	next
	sub	$'0', %al		/* '\n' and every other non-digit end it */
	cmp	$9, %al
	ja	done
	movzbl	%al, %eax
	imul	$10, %ebx, %ebx
	add	%eax, %ebx
	jmp	next
done:
	/* All 32 bits, so values above 255 reach a 4-byte debug-exit port. */
	mov	%ebx, %eax
	outl	%eax, $DEBUG_EXIT_PORT
	jmp	vm_halt
