/*
 * Entry of gdbtarget.elf (long mode, linked at 0x200000 by
 * compute/elf64.ld).  Its own stack and a zeroed .bss, then gdbtarget_main.
 */
	.code64
	.section .text.entry, "ax"
	.globl	_start
_start:
	cli
	cld
	mov	$stack_top, %esp	/* image is below 4 GiB: zero-extends */
	mov	$__bss_start, %edi
	mov	$__bss_end, %ecx
	sub	%edi, %ecx
	shr	$3, %ecx		/* elf64.ld keeps both ends 8-aligned */
	xor	%eax, %eax
	rep stosq
	call	gdbtarget_main
1:	cli				/* gdbtarget_main does not return */
	hlt
	jmp	1b

	.section .stack, "aw", @nobits
	.balign	16
	.space	8192
stack_top:
