/*
 * Common start of every 32-bit flat guest, plus the interface of the
 * helpers in lib/lib32.S.
 *
 * Image layout (asserted in flat.ld, relied on by the host):
 *   +0x00  short jmp to the guest's entry code
 *   +0x04  Multiboot v1 header, a.out kludge (32 bytes)
 *   +0x24  first byte after the header: a guest's patchable parameter
 *          (param_n), if it has one
 * Because the image starts with a jmp, the same bytes run when entered at
 * the load address as a raw binary and when QEMU -kernel boots them as a
 * multiboot kernel.
 */
#ifndef GUESTS_GUEST32_H
#define GUESTS_GUEST32_H

#include "uart.h"

#define MB_MAGIC        0x1badb002
#define MB_FLAGS        0x00010000      /* bit 16: use the address fields */

/*
 * Emit the image head and leave the assembler in .text.head, so the code
 * that follows (params, then \entry) sits within short-jmp range.
 */
.macro GUEST32_HEAD entry
	.section .text.head, "ax"
	.code32
	.globl	_start
_start:
	jmp	\entry
	.balign	4
	.globl	mb_header
mb_header:
	.long	MB_MAGIC
	.long	MB_FLAGS
	.long	-(MB_MAGIC + MB_FLAGS)
	.long	mb_header		/* header_addr: where this header lands */
	.long	_start			/* load_addr: file offset 0 goes here */
	.long	0			/* load_end_addr: load the whole file */
	.long	0			/* bss_end_addr: no bss to clear */
	.long	_start			/* entry_addr */
.endm

/*
 * First thing a guest runs.  pyvmm already gives us IF=0 and a stack, but
 * a multiboot loader promises neither a stack nor DF=0.
 */
.macro GUEST32_PROLOGUE
	cli
	cld
	mov	$STACK_TOP, %esp
.endm

/*
 * lib/lib32.S.  Register calling convention; everything not listed is
 * preserved.
 *   uart_init          program COM1                clobbers %eax, %edx
 *   uart_putc          send %al                    clobbers %eax, %edx
 *   uart_getc          receive into %al            clobbers %eax, %edx
 *   uart_puts          send NUL-terminated (%esi)  clobbers %eax, %edx, %esi
 *   vm_exit            outb %al -> 0xf4, then halt (never returns)
 *   vm_halt            cli; hlt forever            (never returns)
 */

#endif
