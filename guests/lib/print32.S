/*
 * Number and string printing for the 32-bit guests that report what they
 * find (mbinfo, pvhinfo, smp, fwcfg, acpi, rtc).  Interface and register
 * convention in include/guest32.h: everything but %eax/%edx is preserved.
 * Built into lib/libguest.a, so a guest links only what it calls.
 */
#include "guest32.h"

	.text
	.code32

/* %al's low nibble as one hex digit. */
hex_digit:
	and	$0xf, %al
	add	$'0', %al
	cmp	$'9', %al
	jbe	1f
	add	$('a' - '9' - 1), %al
1:	jmp	uart_putc

	.globl	print_hex8
print_hex8:
	push	%eax
	shr	$4, %al
	call	hex_digit
	pop	%eax
	jmp	hex_digit

/* The 8 digits of %eax, no prefix. */
hex32_digits:
	push	%ecx
	push	%ebx
	mov	%eax, %ebx
	mov	$8, %ecx
1:	rol	$4, %ebx
	mov	%bl, %al
	call	hex_digit
	loop	1b
	pop	%ebx
	pop	%ecx
	ret

	.globl	print_hex32
print_hex32:
	push	%eax
	PUTS	"0x"
	pop	%eax
	jmp	hex32_digits

	.globl	print_hex64
print_hex64:
	push	%eax
	push	%edx
	PUTS	"0x"
	pop	%eax
	call	hex32_digits
	pop	%eax
	jmp	hex32_digits

	.globl	print_dec
print_dec:
	push	%ecx
	push	%ebx
	mov	$10, %ebx
	xor	%ecx, %ecx
1:	xor	%edx, %edx		/* push the digits, least significant first */
	div	%ebx
	push	%edx
	inc	%ecx
	test	%eax, %eax
	jnz	1b
2:	pop	%eax
	add	$'0', %al
	call	uart_putc
	loop	2b
	pop	%ebx
	pop	%ecx
	ret

	.globl	print_bytes
print_bytes:
	push	%ecx
	push	%esi
	jecxz	2f
1:	lodsb
	call	print_hex8
	loop	1b
2:	pop	%esi
	pop	%ecx
	ret

	.globl	print_cstr
print_cstr:
	push	%ecx
	push	%esi
	mov	$255, %ecx
1:	lodsb
	test	%al, %al
	jz	2f
	call	uart_putc
	loop	1b
2:	pop	%esi
	pop	%ecx
	ret

	.globl	print_nl
print_nl:
	mov	$'\n', %al
	jmp	uart_putc

	.globl	print_sp
print_sp:
	mov	$' ', %al
	jmp	uart_putc
