/*
 * Entry of the 64-bit C guests (compute.elf, gdbtarget.elf; long mode,
 * linked at 0x200000).  Gives the C code its own stack and a zeroed .bss
 * rather than trusting the loader for either, then calls guest_main.
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
	call	guest_main
1:	cli				/* guest_main should not return */
	hlt
	jmp	1b

	/* Own section so zeroing .bss does not have to touch it. */
	.section .stack, "aw", @nobits
	.balign	16
	.space	8192
stack_top:
