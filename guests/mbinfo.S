/*
 * mbinfo.bin / mbinfo.elf / mbinfo-low.elf: print what a Multiboot v1
 * loader handed over.  One source, built three times: mbinfo.bin is a flat
 * a.out-kludge image like the other guests; mbinfo.elf (built with
 * -DMB_ELF) is an ELF32 whose header has flag bit 16 clear, so the loader
 * must load it by its program headers; mbinfo-low.elf (-DMB_ELF -DMB_LOW)
 * is that ELF linked at 0x8000, spanning 0x8000-0xdc00 like the real-mode
 * test kernels QEMU runs, over the places loaders like to put their boot
 * data.  All ask for page-aligned modules and memory information.
 * Output format: README.md, "mbinfo".  Ends with outb 0 -> 0xf4
 * (status 1); 0x7f (status 0xff) when EAX is not the loader magic; the
 * low variant 1 (status 3) when its own image or bss is not as linked.
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

#ifdef MB_LOW
#define PATTERN_WORDS	0x1000		/* 16 KiB of .data: 0x9000-0xd000 */
#define PATTERN_BASE	0xa5000000	/* word i holds PATTERN_BASE + i */
#define BSS_WORDS	0x200		/* 2 KiB of .bss that must read as zero */

/*
 * Print "image intact" when the .data pattern is as linked (no loader
 * wrote its boot data over it) and "bss zero" when the .bss is zeroed;
 * exit 1 at the first difference.  Then, when EBX points into the image
 * (QEMU writes its info at 0x9500 and then copies the kernel over it),
 * print "info inside the image" and stop there.
 */
.macro CHECK_LOW_IMAGE
	xor	%ecx, %ecx
.Lpattern\@:
	lea	PATTERN_BASE(%ecx), %eax
	cmp	%eax, pattern(,%ecx,4)
	jne	.Lchanged\@
	inc	%ecx
	cmp	$PATTERN_WORDS, %ecx
	jb	.Lpattern\@
	PUTS	"image intact\n"
	xor	%ecx, %ecx
.Lbss\@:
	cmpl	$0, bss_block(,%ecx,4)
	jne	.Ldirty\@
	inc	%ecx
	cmp	$BSS_WORDS, %ecx
	jb	.Lbss\@
	PUTS	"bss zero\n"
	cmp	$__image_start, %ebx
	jb	.Lchecked\@
	cmp	$__image_end, %ebx
	jae	.Lchecked\@
	PUTS	"info inside the image\n"
	jmp	done
.Lchanged\@:
	PUTS	"image changed at "
	lea	pattern(,%ecx,4), %eax
	call	print_hex32
	call	print_nl
	mov	$1, %al
	jmp	vm_exit
.Ldirty\@:
	PUTS	"bss not zero at "
	lea	bss_block(,%ecx,4), %eax
	call	print_hex32
	call	print_nl
	mov	$1, %al
	jmp	vm_exit
.Lchecked\@:
.endm

	.data
	.balign	4
pattern:
	.set	word, 0
	.rept	PATTERN_WORDS
	.long	PATTERN_BASE + word
	.set	word, word + 1
	.endr

	.bss
	.balign	16
bss_block:
	.space	BSS_WORDS * 4
low_stack:
	.space	1024
low_stack_top:
#endif

	GUEST32_HEAD main, HEADER_FLAGS
main:
#ifdef MB_LOW
	cli				/* STACK_TOP is inside this image: */
	cld				/* a stack of its own, in its bss */
	mov	$low_stack_top, %esp
#else
	GUEST32_PROLOGUE		/* keeps %eax (magic) and %ebx (info) */
#endif
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

1:
#ifdef MB_LOW
	CHECK_LOW_IMAGE
#endif
	PUTS	"flags "
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
