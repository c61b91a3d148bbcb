/*
 * exits.bin: provoke each kind of VM exit the pyvmm run loop handles, in
 * a fixed order, against a test device the host registers on ports
 * 0x500-0x50f and MMIO 0xd0000000-0xd0000fff.  The host test asserts the
 * exact access sequence, which README.md spells out; keep the two in
 * step.  No UART output, so every exit before the ending is listed there.
 */
#include "guest32.h"

#define RESULT_PORT	0x508		/* values read back are reported here */
#define MMIO_BASE	0xd0000000

/* outl %eax -> RESULT_PORT */
.macro REPORT
	mov	$RESULT_PORT, %dx
	out	%eax, %dx
.endm

	GUEST32_HEAD main
main:
	GUEST32_PROLOGUE

	/* a. writes of each width to one port */
	mov	$0x500, %dx
	mov	$0x11, %al
	out	%al, %dx
	mov	$0x2233, %ax
	out	%ax, %dx
	mov	$0x44556677, %eax
	out	%eax, %dx

	/* b. reads of each width, each echoed straight back, zero-extended */
	mov	$0x501, %dx
	in	%dx, %al
	movzbl	%al, %eax
	REPORT
	mov	$0x502, %dx
	in	%dx, %ax
	movzwl	%ax, %eax
	REPORT
	mov	$0x504, %dx
	in	%dx, %eax
	REPORT

	/* c. string I/O: 5 bytes out, 4 bytes in, the 4 read back as a dword */
	mov	$str_exits, %esi
	mov	$5, %ecx
	mov	$0x50c, %dx
	rep outsb
	mov	$inbuf, %edi
	mov	$4, %ecx
	mov	$0x50d, %dx
	rep insb
	mov	inbuf, %eax
	REPORT

	/* d. word-sized string output */
	mov	$words, %esi
	mov	$2, %ecx
	mov	$0x50a, %dx
	rep outsw

	/* e. a port nobody claims: the host must answer 0xff */
	mov	$0x5ff, %dx
	in	%dx, %al
	movzbl	%al, %eax
	REPORT

	/* f. MMIO writes of each width, then two reads */
	movb	$0x5a, MMIO_BASE + 0x00
	movw	$0x5b5c, MMIO_BASE + 0x02
	movl	$0x5d5e5f60, MMIO_BASE + 0x04
	mov	MMIO_BASE + 0x10, %eax
	REPORT
	movzbl	MMIO_BASE + 0x20, %eax	/* one 1-byte read */
	REPORT

	/* g. the host picks how the run ends */
	mov	$0x50f, %dx
	in	%dx, %al
#ifdef EXITS_FORCE_ENDING
	/* Test hook, never in the shipped image: QEMU has no test device. */
	mov	$EXITS_FORCE_ENDING, %al
#endif
	movzbl	%al, %eax
	cmp	$6, %eax
	ja	end_halt
	jmp	*endings(, %eax, 4)

end_halt:				/* 0 and unknown: clean stop, status 0 */
	VM_HALT

end_triple:				/* 1: #DE -> #DF -> shutdown (no IDT) */
	lidt	null_idt
	xor	%ecx, %ecx
	div	%ecx
	VM_HALT

end_out8:				/* 2: status 0x85 */
	mov	$0x42, %al
	out	%al, $DEBUG_EXIT_PORT
	VM_HALT

end_out16:				/* 3: 16-bit write of 0x0107 */
	mov	$0x0107, %ax
	out	%ax, $DEBUG_EXIT_PORT
	VM_HALT

end_spin:				/* 4: never exits; the host times out */
	jmp	end_spin

end_sti_hlt:				/* 5: halt with IF=1; nothing will come */
	sti
1:	hlt
	jmp	1b

end_ud2:				/* 6: #UD with no usable IDT -> shutdown */
	lidt	null_idt		/* don't rely on the loader's IDT */
	ud2
	VM_HALT

	.section .rodata
	.balign	4
endings:
	.long	end_halt, end_triple, end_out8, end_out16
	.long	end_spin, end_sti_hlt, end_ud2
null_idt:				/* limit 0: every vector is out of range */
	.word	0
	.long	0
str_exits:
	.ascii	"EXITS"
	.balign	2
words:
	.word	0xa1a2, 0xb1b2

	.data
	.balign	4
inbuf:	.long	0			/* rep insb target; in the image, not .bss */
