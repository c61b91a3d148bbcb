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
#define MB_PAGE_ALIGN   0x00000001      /* bit 0: page-align the modules */
#define MB_MEMORY_INFO  0x00000002      /* bit 1: mem_lower/upper, mmap */

/*
 * Emit the image head and leave the assembler in .text.head, so the code
 * that follows (params, then \entry) sits within short-jmp range.
 * \flags without bit 16 makes a Multiboot ELF kernel (mbinfo.elf): the
 * loader then ignores the address fields, which stay in place.
 */
.macro GUEST32_HEAD entry, flags=MB_FLAGS
	.section .text.head, "ax"
	.code32
	.globl	_start
_start:
	jmp	\entry
	.balign	4
	.globl	mb_header
mb_header:
	.long	MB_MAGIC
	.long	\flags
	.long	-(MB_MAGIC + (\flags))
	.long	mb_header		/* header_addr: where this header lands */
	.long	_start			/* load_addr: file offset 0 goes here */
	.long	0			/* load_end_addr: load the whole file */
	.long	0			/* bss_end_addr: no bss to clear */
	.long	_start			/* entry_addr */
.endm

/*
 * PVH instead of multiboot (ELF32 guests linked with elf32.ld): a "Xen"
 * ELF note of type XEN_ELFNOTE_PHYS32_ENTRY holding the 32-bit entry,
 * where the loader starts us in protected mode with EBX = hvm_start_info.
 * Leaves the assembler in .text.
 */
#define XEN_ELFNOTE_PHYS32_ENTRY 18
.macro PVH_NOTE entry
	.pushsection .note.Xen, "a", @note
	.balign	4
	.long	4			/* n_namesz: "Xen\0" */
	.long	4			/* n_descsz */
	.long	XEN_ELFNOTE_PHYS32_ENTRY
	.asciz	"Xen"
	.balign	4
	.long	\entry
	.popsection
	.text
	.code32
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
 *   uart_trygetc       like uart_getc, but CF=1 and no wait when nothing
 *                      has arrived                 clobbers %eax, %edx
 *
 * lib/print32.S, for the guests that report what they find, one
 * "key value" line at a time.  Same convention.
 *   print_hex32        %eax as 0x%08x              clobbers %eax, %edx
 *   print_hex64        %edx:%eax as 0x%016x        clobbers %eax, %edx
 *   print_hex8         %al as %02x (no 0x)         clobbers %eax, %edx
 *   print_dec          %eax as unsigned decimal    clobbers %eax, %edx
 *   print_bytes        %ecx bytes at (%esi) as %02x each, no spaces
 *                                                  clobbers %eax, %edx
 *   print_cstr         NUL-terminated string at (%esi), at most 255 bytes
 *                      (so a bad pointer cannot flood the console)
 *                                                  clobbers %eax, %edx
 *   print_nl / print_sp  '\n' / ' '                clobbers %eax, %edx
 *   PUTS "text"        (macro) print a literal     clobbers %eax, %edx
 *
 * lib/fwcfg32.S, QEMU's fw_cfg through its I/O ports.
 *   fwcfg_select       select item %ax, rewind it  clobbers %edx
 *   fwcfg_read         %ecx bytes of the selected item to (%edi)
 *                                                  clobbers %ecx, %edx, %edi
 *   fwcfg_get32        select item %ax, return its first 4 bytes in %eax
 *                      (little-endian; bytes past its end read 0)
 *                                                  clobbers %eax, %edx
 *
 * lib/delay32.S
 *   tsc_delay          spin for %eax TSC cycles    clobbers %eax, %edx
 *
 * lib/acpi32.S, the ACPI tables as an OS finds them.
 *   acpi_checksum      %eax = sum of %ecx bytes at (%esi) mod 256, ZF=1
 *                      when it is 0 (valid)         clobbers %eax, %edx
 *   acpi_find_rsdp     %esi = the RSDP in 0xe0000-0xfffff, CF=1 if none
 *                                                  clobbers %eax, %ecx, %edx
 *   acpi_sleep_type    %eax = SLP_TYP of the sleep package named %eax
 *                      ("_S5_" as a u32) in the DSDT at %esi; CF=1 with
 *                      %eax 0 (no such name) or 1 (not a package of
 *                      integers)                   clobbers %edx, %edi
 */

/* Print a string literal: the text goes to .rodata, %esi is preserved. */
.macro PUTS text
	.pushsection .rodata
.Lputs_text\@:
	.asciz	"\text"
	.popsection
	push	%esi
	mov	$.Lputs_text\@, %esi
	call	uart_puts
	pop	%esi
.endm

#endif
