/*
 * paging32.bin: 32-bit paging without PAE (two-level tables, 4 KiB pages,
 * and one 4 MiB page through CR4.PSE), then a page fault.
 *
 * Builds its tables at run time in RAM at 0x200000 (page directory),
 * 0x201000 (identity map of the first 4 MiB), 0x203000 (a table whose only
 * entry maps 0xc0000000 to the page at 0x202000), and a 4 MiB PDE mapping
 * 0x80000000 to physical 0.  With CR0.PG set and CR4.PAE clear it prints:
 *
 *   paging32
 *   cr4.pae 0
 *   alias read 0x12345678       0xc0000000 reads what was stored at 0x202000
 *   alias write 0xcafef00d      a write to 0xc0000004 lands at 0x202004
 *   pte 0x00202063              the CPU set Accessed and Dirty in the PTE
 *   pde 0x00203023              and Accessed in the PDE above it
 *   pse read 0x12345678         0x80202000 through the 4 MiB page
 *   pse pde 0x000000a3          Accessed set, Dirty clear (it was only read)
 *   page fault cr2 0xdead0000 error 0x00000002   write to a missing page
 *
 * and ends with outb 0x22 -> 0xf4 (status 0x45).  Any other exception
 * prints "exception" and its vector, outb 0x7e (status 0xfd).
 */
#include "guest32.h"

#define PD		0x200000
#define PT_LOW		0x201000
#define TARGET		0x202000
#define PT_HIGH		0x203000
#define ALIAS		0xc0000000
#define PSE_BASE	0x80000000
#define UNMAPPED	0xdead0000
#define MAGIC		0x12345678
#define MAGIC2		0xcafef00d
#define PTE_P		0x001
#define PTE_RW		0x002
#define PDE_PS		0x080
#define CR0_PG		0x80000000
#define CR4_PSE		0x00000010
#define CR4_PAE		0x00000020
#define NVECTORS	32
#define GATE_INT32	0x8e00
#define PF_VECTOR	14

	GUEST32_HEAD main
main:
	GUEST32_PROLOGUE
	call	uart_init

	/* IDT: #PF -> page_fault, every other exception -> fault_N. */
	xor	%ecx, %ecx
1:	mov	fault_stubs(,%ecx,4), %eax
	cmp	$PF_VECTOR, %ecx
	jne	2f
	mov	$page_fault, %eax
2:	mov	%ax, idt(,%ecx,8)
	mov	%cs, idt+2(,%ecx,8)
	movw	$GATE_INT32, idt+4(,%ecx,8)
	shr	$16, %eax
	mov	%ax, idt+6(,%ecx,8)
	inc	%ecx
	cmp	$NVECTORS, %ecx
	jb	1b
	lidt	idt_desc

	/* Zero the directory and the three pages after it. */
	mov	$PD, %edi
	xor	%eax, %eax
	mov	$(4 * 1024), %ecx
	rep stosl

	/* Identity map 0 .. 4 MiB with 4 KiB pages. */
	mov	$PT_LOW, %edi
	mov	$(PTE_P | PTE_RW), %eax
1:	stosl
	add	$0x1000, %eax
	cmp	$PT_LOW + 0x1000, %edi
	jb	1b
	movl	$(PT_LOW | PTE_P | PTE_RW), PD
	movl	$(TARGET | PTE_P | PTE_RW), PT_HIGH
	movl	$(PT_HIGH | PTE_P | PTE_RW), PD + (ALIAS >> 22) * 4
	movl	$(0 | PDE_PS | PTE_P | PTE_RW), PD + (PSE_BASE >> 22) * 4
	movl	$MAGIC, TARGET

	mov	$PD, %eax
	mov	%eax, %cr3
	mov	%cr4, %eax
	and	$~CR4_PAE, %eax
	or	$CR4_PSE, %eax
	mov	%eax, %cr4
	mov	%cr0, %eax
	or	$CR0_PG, %eax
	mov	%eax, %cr0
	jmp	1f			/* paging is on from here */
1:	PUTS	"paging32\ncr4.pae "
	mov	%cr4, %eax
	shr	$5, %eax
	and	$1, %eax
	call	print_dec
	call	print_nl

	PUTS	"alias read "
	mov	ALIAS, %eax
	call	print_hex32
	call	print_nl

	movl	$MAGIC2, ALIAS + 4
	PUTS	"alias write "
	mov	TARGET + 4, %eax
	call	print_hex32
	call	print_nl

	PUTS	"pte "
	mov	PT_HIGH, %eax
	call	print_hex32
	PUTS	"\npde "
	mov	PD + (ALIAS >> 22) * 4, %eax
	call	print_hex32
	call	print_nl

	PUTS	"pse read "
	mov	PSE_BASE + TARGET, %eax
	call	print_hex32
	PUTS	"\npse pde "
	mov	PD + (PSE_BASE >> 22) * 4, %eax
	call	print_hex32
	call	print_nl

	movl	$1, UNMAPPED
	PUTS	"no page fault\n"
	mov	$0x7d, %al
	jmp	vm_exit

page_fault:
	PUTS	"page fault cr2 "
	mov	%cr2, %eax
	call	print_hex32
	PUTS	" error "
	pop	%eax
	call	print_hex32
	call	print_nl
	mov	$0x22, %al
	jmp	vm_exit

/* Exception N: print it and end; fault_stubs holds their addresses. */
fault:	PUTS	"exception "
	mov	%ebx, %eax
	call	print_dec
	call	print_nl
	mov	$0x7e, %al
	jmp	vm_exit

	.irp	n, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31
fault_\n:
	mov	$\n, %ebx
	jmp	fault
	.endr

	.section .rodata
	.balign	4
fault_stubs:
	.irp	n, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31
	.long	fault_\n
	.endr
	.word	0
idt_desc:
	.word	NVECTORS * 8 - 1
	.long	idt

	.data
	.balign	8
idt:	.space	NVECTORS * 8
