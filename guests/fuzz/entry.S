/*
 * fuzz_target.elf's entry: long mode (the ELF loader enters it there),
 * then the parser runs in user mode (CPL 3), where a nested kvm_pvm host
 * runs guest code natively instead of emulating it as it does kernel code.
 *
 * Sets up page tables of its own that identity-map 2 MiB..1 GiB with user
 * access (the first 2 MiB are not mapped: a null pointer faults) and the
 * harness's park page at PARK_MMIO, a GDT with user segments, and no IDT:
 * any exception in the parser is a triple fault, which ends the run as a
 * crash. Then iretq to user_main at CPL 3. (User-mode port I/O would need
 * IOPL 3, which kvm_pvm does not honour: the parser parks through MMIO.)
 */
#define PARK_MMIO	0xe0000000
	.code64
	.section .text.entry, "ax"
	.globl	_start
_start:
	cli
	cld
	mov	$kernel_stack_top, %esp
	mov	$__bss_start, %edi
	mov	$__bss_end, %ecx
	sub	%edi, %ecx
	shr	$3, %ecx
	xor	%eax, %eax
	rep stosq

	mov	$pdpt, %eax
	or	$0x7, %eax			/* present, writable, user */
	mov	%rax, pml4
	mov	$page_directory, %eax
	or	$0x7, %eax
	mov	%rax, pdpt
	mov	$1, %ecx			/* 2 MiB pages 1..511 */
1:	mov	%rcx, %rax
	shl	$21, %rax
	or	$0x87, %rax			/* present, writable, user, 2 MiB */
	mov	%rax, page_directory(,%rcx,8)
	inc	%ecx
	cmp	$512, %ecx
	jb	1b
	mov	$high_directory, %eax		/* 3..4 GiB: the park page only */
	or	$0x7, %eax
	mov	%rax, pdpt + 3 * 8
	mov	$(PARK_MMIO | 0x9f), %eax	/* ... uncached (PCD, PWT) */
	mov	%rax, high_directory + ((PARK_MMIO >> 21) & 511) * 8
	mov	$pml4, %eax
	mov	%rax, %cr3

	lgdt	gdt_descriptor
	pushq	$0x08
	lea	2f(%rip), %rax
	pushq	%rax
	lretq
2:	mov	$0x10, %eax
	mov	%eax, %ds
	mov	%eax, %es
	mov	%eax, %ss

	pushq	$0x1b				/* user data, RPL 3 */
	pushq	$user_stack_top
	pushq	$0x3002				/* IOPL 3, interrupts off */
	pushq	$0x23				/* user code, RPL 3 */
	pushq	$user_main
	iretq

	.section .rodata
	.balign	8
gdt:
	.quad	0
	.quad	0x00af9a000000ffff		/* 0x08 kernel code, 64-bit */
	.quad	0x00cf92000000ffff		/* 0x10 kernel data */
	.quad	0x00cff2000000ffff		/* 0x18 user data */
	.quad	0x00affa000000ffff		/* 0x20 user code, 64-bit */
gdt_end:
gdt_descriptor:
	.word	gdt_end - gdt - 1
	.quad	gdt

	.section .bss.tables, "aw", @nobits
	.balign	4096
pml4:		.space	4096
pdpt:		.space	4096
page_directory:	.space	4096
high_directory:	.space	4096

	.section .stack, "aw", @nobits
	.balign	16
	.space	4096
kernel_stack_top:
	.space	16384
	.globl	user_stack_top
user_stack_top:
