/*
 * lmboot.bin: QEMU-only test helper, not a guest.  QEMU's -kernel cannot
 * start 64-bit images, so this 32-bit multiboot kernel (loaded at
 * 0x300000, out of the guests' way) takes the first multiboot module
 * (-initrd FILE), loads it the way pyvmm will and enters it in long mode
 * with pyvmm's register conventions:
 *   - ELF64 (starts with \x7fELF): each PT_LOAD copied to p_paddr, the
 *     rest of p_memsz zeroed, entered at e_entry;
 *   - anything else: a flat binary copied to 0x100000 and entered there;
 *   - identity-mapped low 4 GiB in 2 MiB pages, CS=0x10 (64-bit),
 *     DS=ES=SS=0x18, RSP=0x8ff0, IF=0.
 * Usage: qemu-system-x86_64 -kernel lmboot.bin -initrd long.bin ...
 * Failure prints a message and exits with debug-exit code 0x7f.
 */
#include "guest32.h"

#define MB_BOOT_MAGIC	0x2badb002
#define MBI_FLAG_MODS	(1 << 3)
#define ELF_MAGIC	0x464c457f	/* "\x7fELF" little-endian */
#define PT_LOAD		1
#define FLAT_BASE	0x100000

/* Page tables in low memory that no guest uses: PML4, PDPT, 4 PDs. */
#define PT_BASE		0x10000
#define PML4		(PT_BASE + 0x0000)
#define PDPT		(PT_BASE + 0x1000)
#define PD0		(PT_BASE + 0x2000)
#define PTE_P_RW	0x003
#define PDE_2M		0x083		/* present, writable, 2 MiB page */

#define CR0_PE		0x00000001
#define CR0_PG		0x80000000
#define CR4_PAE		0x00000020
#define MSR_EFER	0xc0000080
#define EFER_LME	0x00000100

	GUEST32_HEAD main
main:
	cli
	cld
	mov	$STACK_TOP, %esp	/* keep %eax/%ebx: multiboot magic/info */
	cmp	$MB_BOOT_MAGIC, %eax
	jne	fail
	testl	$MBI_FLAG_MODS, (%ebx)
	jz	fail
	cmpl	$0, 20(%ebx)		/* mods_count */
	je	fail
	mov	24(%ebx), %ebx		/* mods_addr: first module entry */
	mov	0(%ebx), %esi		/* mod_start */
	mov	4(%ebx), %ecx		/* mod_end */
	sub	%esi, %ecx
	cmpl	$ELF_MAGIC, (%esi)
	je	load_elf

	/* Flat image. */
	mov	$FLAT_BASE, %edi
	rep movsb
	mov	$FLAT_BASE, %ebp	/* entry */
	jmp	paging

load_elf:				/* ELF64; only the low halves matter here */
	mov	%esi, %ebx		/* file base */
	mov	0x18(%ebx), %ebp	/* e_entry */
	mov	0x20(%ebx), %edx	/* e_phoff */
	add	%ebx, %edx
	movzwl	0x38(%ebx), %ecx	/* e_phnum */
1:	jecxz	paging
	cmpl	$PT_LOAD, 0x00(%edx)	/* p_type */
	jne	2f
	push	%ecx
	mov	0x08(%edx), %esi	/* p_offset */
	add	%ebx, %esi
	mov	0x18(%edx), %edi	/* p_paddr */
	mov	0x20(%edx), %ecx	/* p_filesz */
	rep movsb
	mov	0x28(%edx), %ecx	/* p_memsz */
	sub	0x20(%edx), %ecx
	xor	%eax, %eax
	rep stosb
	pop	%ecx
2:	movzwl	0x36(%ebx), %eax	/* e_phentsize */
	add	%eax, %edx
	dec	%ecx
	jmp	1b

paging:
	mov	$PT_BASE, %edi		/* clear all six tables */
	mov	$(6 * 4096 / 4), %ecx
	xor	%eax, %eax
	rep stosl
	movl	$(PDPT + PTE_P_RW), PML4
	mov	$PDPT, %edi		/* PDPT[0..3] -> PD0..PD3 */
	mov	$(PD0 + PTE_P_RW), %eax
	mov	$4, %ecx
1:	mov	%eax, (%edi)
	add	$0x1000, %eax
	add	$8, %edi
	loop	1b
	mov	$PD0, %edi		/* PDE i maps i * 2 MiB, i < 2048 */
	xor	%ecx, %ecx
1:	mov	%ecx, %eax
	shl	$21, %eax
	or	$PDE_2M, %eax
	mov	%eax, (%edi)
	mov	%ecx, %eax
	shr	$11, %eax		/* bits 32+ of i * 2 MiB */
	mov	%eax, 4(%edi)
	add	$8, %edi
	inc	%ecx
	cmp	$2048, %ecx
	jb	1b

	lgdt	gdt_desc
	mov	%cr4, %eax
	or	$CR4_PAE, %eax
	mov	%eax, %cr4
	mov	$PML4, %eax
	mov	%eax, %cr3
	mov	$MSR_EFER, %ecx
	rdmsr
	or	$EFER_LME, %eax
	wrmsr
	mov	%cr0, %eax
	or	$(CR0_PE | CR0_PG), %eax
	mov	%eax, %cr0		/* now in compatibility mode */
	ljmp	$0x10, $long64		/* L=1 code segment: 64-bit mode */

	.code64
long64:
	mov	$0x18, %eax
	mov	%eax, %ds
	mov	%eax, %es
	mov	%eax, %ss
	mov	%eax, %fs
	mov	%eax, %gs
	mov	$STACK_TOP, %esp
	mov	%ebp, %eax		/* entry, zero-extended */
	xor	%ebx, %ebx
	xor	%ecx, %ecx
	xor	%edx, %edx
	xor	%esi, %esi
	xor	%edi, %edi
	xor	%ebp, %ebp
	jmp	*%rax

	.code32
fail:
	call	uart_init
	mov	$msg_fail, %esi
	call	uart_puts
	mov	$0x7f, %al
	jmp	vm_exit

	.section .rodata
	.balign	8
gdt:
	.quad	0			/* 0x00 null */
	.quad	0			/* 0x08 unused */
	.quad	0x00af9a000000ffff	/* 0x10 64-bit code */
	.quad	0x00cf92000000ffff	/* 0x18 flat data */
gdt_end:
gdt_desc:
	.word	gdt_end - gdt - 1
	.long	gdt
msg_fail:
	.asciz	"lmboot: no multiboot module to start\n"
