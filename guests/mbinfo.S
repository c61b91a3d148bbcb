/*
 * mbinfo.bin / mbinfo.elf: print what a Multiboot v1 loader handed over.
 * One source, built twice: mbinfo.bin is a flat a.out-kludge image like
 * the other guests; mbinfo.elf (built with -DMB_ELF) is an ELF32 whose
 * header has flag bit 16 clear, so the loader must load it by its program
 * headers.  Both ask for page-aligned modules and memory information.
 * Output format: README.md, "mbinfo".  Ends with outb 0 -> 0xf4
 * (status 1); 0x7f (status 0xff) when EAX is not the loader magic.
 */
#include "guest32.h"

#define MB_BOOT_MAGIC	0x2badb002

/* Info structure offsets and flag bits (Multiboot 0.6.96, 3.3). */
#define MBI_FLAGS	0
#define MBI_MEM_LOWER	4
#define MBI_MEM_UPPER	8
#define MBI_CMDLINE	16
#define MBI_MODS_COUNT	20
#define MBI_MODS_ADDR	24
#define MBI_MMAP_LENGTH	44
#define MBI_MMAP_ADDR	48
#define MBI_LOADER_NAME	64
#define MBI_HAS_MEM	(1 << 0)
#define MBI_HAS_CMDLINE	(1 << 2)
#define MBI_HAS_MODS	(1 << 3)
#define MBI_HAS_MMAP	(1 << 6)
#define MBI_HAS_LOADER	(1 << 9)

#define MOD_HEAD_BYTES	16

#ifdef MB_ELF
#define HEADER_FLAGS	(MB_PAGE_ALIGN | MB_MEMORY_INFO)
#else
#define HEADER_FLAGS	(MB_FLAGS | MB_PAGE_ALIGN | MB_MEMORY_INFO)
#endif

/* Print "\text absent\n" and go to \next unless info flag \bit is set. */
.macro NEED bit, text, next
	testl	$\bit, MBI_FLAGS(%ebx)
	jnz	.Lneed\@
	PUTS	"\text absent\n"
	jmp	\next
.Lneed\@:
.endm

	GUEST32_HEAD main, HEADER_FLAGS
main:
	GUEST32_PROLOGUE		/* keeps %eax (magic) and %ebx (info) */
	mov	%eax, %ebp
	call	uart_init
	PUTS	"magic "
	mov	%ebp, %eax
	call	print_hex32
	call	print_nl
	cmp	$MB_BOOT_MAGIC, %ebp
	je	1f
	mov	$0x7f, %al		/* %ebx is no info structure */
	jmp	vm_exit

1:	PUTS	"flags "
	mov	MBI_FLAGS(%ebx), %eax
	call	print_hex32
	call	print_nl

	NEED	MBI_HAS_MEM, "mem", cmdline
	PUTS	"mem_lower "
	mov	MBI_MEM_LOWER(%ebx), %eax
	call	print_dec
	PUTS	"\nmem_upper "
	mov	MBI_MEM_UPPER(%ebx), %eax
	call	print_dec
	call	print_nl

cmdline:
	NEED	MBI_HAS_CMDLINE, "cmdline", loader
	PUTS	"cmdline "
	mov	MBI_CMDLINE(%ebx), %esi
	call	print_cstr
	call	print_nl

loader:
	NEED	MBI_HAS_LOADER, "loader", mmap
	PUTS	"loader "
	mov	MBI_LOADER_NAME(%ebx), %esi
	call	print_cstr
	call	print_nl

mmap:	/* entries: u32 size (of the rest), u64 base, u64 length, u32 type */
	NEED	MBI_HAS_MMAP, "mmap", mods
	mov	MBI_MMAP_ADDR(%ebx), %esi
	mov	MBI_MMAP_LENGTH(%ebx), %edi
	add	%esi, %edi		/* end of the table */
1:	cmp	%edi, %esi
	jae	mods
	PUTS	"mmap "
	mov	4(%esi), %eax
	mov	8(%esi), %edx
	call	print_hex64
	call	print_sp
	mov	12(%esi), %eax
	mov	16(%esi), %edx
	call	print_hex64
	call	print_sp
	mov	20(%esi), %eax
	call	print_dec
	call	print_nl
	mov	(%esi), %eax
	lea	4(%esi,%eax), %esi
	jmp	1b

mods:	/* entries: mod_start, mod_end (exclusive), string, reserved */
	NEED	MBI_HAS_MODS, "mods", done
	PUTS	"mods "
	mov	MBI_MODS_COUNT(%ebx), %eax
	call	print_dec
	call	print_nl
	mov	MBI_MODS_ADDR(%ebx), %edi
	xor	%ebp, %ebp		/* module index */
1:	cmp	MBI_MODS_COUNT(%ebx), %ebp
	jae	done
	PUTS	"mod "
	mov	%ebp, %eax
	call	print_dec
	PUTS	" cmdline "
	mov	8(%edi), %esi
	call	print_cstr
	PUTS	"\nmod "
	mov	%ebp, %eax
	call	print_dec
	PUTS	" size "
	mov	4(%edi), %ecx
	sub	(%edi), %ecx
	mov	%ecx, %eax
	call	print_dec
	PUTS	" aligned "
	mov	(%edi), %eax
	test	$0xfff, %eax
	setz	%al
	movzbl	%al, %eax
	call	print_dec
	PUTS	" head "
	cmp	$MOD_HEAD_BYTES, %ecx
	jbe	2f
	mov	$MOD_HEAD_BYTES, %ecx
2:	mov	(%edi), %esi
	call	print_bytes
	call	print_nl
	add	$16, %edi
	inc	%ebp
	jmp	1b

done:	mov	$0, %al
	jmp	vm_exit
