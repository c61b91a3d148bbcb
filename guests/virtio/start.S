/*
 * Entry of the virtio test guests: a 32-bit multiboot kernel (the a.out
 * kludge, so QEMU's -kernel and pyvmm load the very same flat file) that
 * switches to long mode itself and calls guest_main(multiboot info).
 *
 *   +0x00 jmp to the entry, +0x04 multiboot header (load and bss ends from
 *   the linker script), then code. Identity-mapped low 4 GiB in 2 MiB pages,
 *   CS 0x08 (64-bit), data 0x10, own stack, interrupts off.
 *
 * Also the interrupt stubs: every vector pushes its number and reaches
 * interrupt_entry(vector) in C with the caller-saved registers preserved.
 */
#define MB_MAGIC	0x1badb002
#define MB_FLAGS	0x00010000	/* bit 16: the address fields below are valid */
#define CR0_PE		0x00000001
#define CR0_PG		0x80000000
#define CR4_PAE		0x00000020
#define MSR_EFER	0xc0000080
#define EFER_LME	0x00000100
#define PTE_P_RW	0x003
#define PDE_2M		0x083

	.section .text.head, "ax"
	.code32
	.globl	_start
_start:
	jmp	entry32
	.balign	4
mb_header:
	.long	MB_MAGIC
	.long	MB_FLAGS
	.long	-(MB_MAGIC + MB_FLAGS)
	.long	mb_header		/* header_addr */
	.long	_start			/* load_addr */
	.long	_edata			/* load_end_addr */
	.long	_end			/* bss_end_addr: the loader zeroes the bss */
	.long	_start			/* entry_addr */

entry32:
	cli
	cld
	mov	%ebx, %ebp		/* multiboot info, for guest_main */
	mov	$stack_top, %esp
	/* PML4[0] -> PDPT, PDPT[0..3] -> 4 page directories of 2 MiB pages. */
	mov	$pdpt, %eax
	or	$PTE_P_RW, %eax
	mov	%eax, pml4
	mov	$pdpt, %edi
	mov	$pd, %eax
	or	$PTE_P_RW, %eax
	mov	$4, %ecx
1:	mov	%eax, (%edi)
	add	$0x1000, %eax
	add	$8, %edi
	loop	1b
	mov	$pd, %edi
	xor	%ecx, %ecx
1:	mov	%ecx, %eax
	shl	$21, %eax
	or	$PDE_2M, %eax
	mov	%eax, (%edi)
	mov	%ecx, %eax
	shr	$11, %eax
	mov	%eax, 4(%edi)
	add	$8, %edi
	inc	%ecx
	cmp	$2048, %ecx
	jb	1b

	lgdt	gdt_pointer
	mov	%cr4, %eax
	or	$CR4_PAE, %eax
	mov	%eax, %cr4
	mov	$pml4, %eax
	mov	%eax, %cr3
	mov	$MSR_EFER, %ecx
	rdmsr
	or	$EFER_LME, %eax
	wrmsr
	mov	%cr0, %eax
	or	$(CR0_PE | CR0_PG), %eax
	mov	%eax, %cr0
	ljmp	$0x08, $entry64

	.code64
entry64:
	mov	$0x10, %eax
	mov	%eax, %ds
	mov	%eax, %es
	mov	%eax, %ss
	mov	%eax, %fs
	mov	%eax, %gs
	mov	$stack_top, %esp
	mov	%ebp, %edi		/* guest_main(multiboot info), zero-extended */
	call	guest_main
1:	cli
	hlt
	jmp	1b

/* Interrupt stubs: 256 of them, 16 bytes apart from interrupt_stubs. */
	.text
	.balign	16
	.globl	interrupt_stubs
interrupt_stubs:
	.set	vector, 0
	.rept	256
	.balign	16
	push	$vector
	jmp	interrupt_common
	.set	vector, vector + 1
	.endr

interrupt_common:
	push	%rax
	push	%rcx
	push	%rdx
	push	%rsi
	push	%rdi
	push	%r8
	push	%r9
	push	%r10
	push	%r11
	push	%rbx
	mov	80(%rsp), %rdi		/* the vector number */
	mov	%rsp, %rbx
	and	$-16, %rsp		/* the ABI's stack alignment for the call */
	call	interrupt_entry
	mov	%rbx, %rsp
	pop	%rbx
	pop	%r11
	pop	%r10
	pop	%r9
	pop	%r8
	pop	%rdi
	pop	%rsi
	pop	%rdx
	pop	%rcx
	pop	%rax
	add	$8, %rsp		/* the vector number */
	iretq

	.section .rodata
	.balign	8
gdt:
	.quad	0
	.quad	0x00af9a000000ffff	/* 0x08: 64-bit code */
	.quad	0x00cf92000000ffff	/* 0x10: flat data */
gdt_end:
gdt_pointer:
	.word	gdt_end - gdt - 1
	.long	gdt

	.section .bss
	.balign	4096
pml4:	.space	4096
pdpt:	.space	4096
pd:	.space	4 * 4096
	.balign	16
	.space	16384
stack_top:
