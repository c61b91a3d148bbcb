/*
 * pvhinfo.elf: print what a PVH loader handed over (the x86/HVM direct
 * boot ABI, Xen's public/arch-x86/hvm/start_info.h).  An ELF32 with a
 * "Xen" note of type XEN_ELFNOTE_PHYS32_ENTRY giving the 32-bit entry,
 * where EBX points at struct hvm_start_info.  e_entry is a different
 * address, a stub that reports a loader that ignored the note.
 * Output format: README.md, "pvhinfo".  Ends with outb 0 -> 0xf4
 * (status 1); 0x7f (status 0xff) on a bad magic, 0x7d (0xfb) when
 * entered at e_entry.
 */
#include "guest32.h"

#define HVM_START_MAGIC	0x336ec578

/* struct hvm_start_info (version 1) */
#define SI_MAGIC	0
#define SI_VERSION	4
#define SI_FLAGS	8
#define SI_NR_MODULES	12
#define SI_MODLIST	16	/* u64 each, the upper halves ignored */
#define SI_CMDLINE	24
#define SI_RSDP		32
#define SI_MEMMAP	40
#define SI_MEMMAP_N	48
/* struct hvm_modlist_entry: u64 paddr, size, cmdline_paddr, reserved */
#define MOD_PADDR	0
#define MOD_SIZE	8
#define MOD_CMDLINE	16
#define MOD_ENTRY_SIZE	32
/* struct hvm_memmap_table_entry: u64 addr, u64 size, u32 type, reserved */
#define MAP_ENTRY_SIZE	24

#define MOD_HEAD_BYTES	16

	PVH_NOTE pvh_entry
	.globl	_start
_start:					/* e_entry */
	GUEST32_PROLOGUE
	call	uart_init
	PUTS	"entered at e_entry, not at the PVH entry\n"
	mov	$0x7d, %al
	jmp	vm_exit

/* Print "\key " and the C string whose address is at \field(%reg), or "absent". */
.macro CSTR_FIELD key, field, reg
	PUTS	"\key "
	mov	\field(\reg), %esi
	test	%esi, %esi
	jnz	.Lcstr\@
	mov	$absent, %esi
.Lcstr\@:
	call	print_cstr
	call	print_nl
.endm

pvh_entry:
	GUEST32_PROLOGUE		/* keeps %ebx: hvm_start_info */
	call	uart_init
	PUTS	"magic "
	mov	SI_MAGIC(%ebx), %eax
	call	print_hex32
	call	print_nl
	cmpl	$HVM_START_MAGIC, SI_MAGIC(%ebx)
	je	1f
	mov	$0x7f, %al
	jmp	vm_exit

1:	PUTS	"version "
	mov	SI_VERSION(%ebx), %eax
	call	print_dec
	PUTS	"\nflags "
	mov	SI_FLAGS(%ebx), %eax
	call	print_hex32
	call	print_nl
	CSTR_FIELD cmdline, SI_CMDLINE, %ebx

	PUTS	"nr_modules "
	mov	SI_NR_MODULES(%ebx), %eax
	call	print_dec
	call	print_nl
	mov	SI_MODLIST(%ebx), %edi
	xor	%ebp, %ebp		/* module index */
2:	cmp	SI_NR_MODULES(%ebx), %ebp
	jae	memmap
	PUTS	"mod "
	mov	%ebp, %eax
	call	print_dec
	PUTS	" size "
	mov	MOD_SIZE(%edi), %ecx
	mov	%ecx, %eax
	call	print_dec
	PUTS	" head "
	cmp	$MOD_HEAD_BYTES, %ecx
	jbe	3f
	mov	$MOD_HEAD_BYTES, %ecx
3:	mov	MOD_PADDR(%edi), %esi
	call	print_bytes
	PUTS	"\nmod "
	mov	%ebp, %eax
	call	print_dec
	call	print_sp
	CSTR_FIELD cmdline, MOD_CMDLINE, %edi
	add	$MOD_ENTRY_SIZE, %edi
	inc	%ebp
	jmp	2b

memmap:	/* version 0 has no memory map fields */
	cmpl	$1, SI_VERSION(%ebx)
	jae	1f
	PUTS	"memmap absent\n"
	jmp	rsdp
1:	PUTS	"memmap_entries "
	mov	SI_MEMMAP_N(%ebx), %eax
	call	print_dec
	call	print_nl
	mov	SI_MEMMAP(%ebx), %esi
	xor	%ecx, %ecx
2:	cmp	SI_MEMMAP_N(%ebx), %ecx
	jae	rsdp
	PUTS	"memmap "
	mov	0(%esi), %eax
	mov	4(%esi), %edx
	call	print_hex64
	call	print_sp
	mov	8(%esi), %eax
	mov	12(%esi), %edx
	call	print_hex64
	call	print_sp
	mov	16(%esi), %eax
	call	print_dec
	call	print_nl
	add	$MAP_ENTRY_SIZE, %esi
	inc	%ecx
	jmp	2b

rsdp:	/* "rsdp ok": a pointer to an "RSD PTR " signature; "zero"; "bad" */
	mov	SI_RSDP(%ebx), %esi
	test	%esi, %esi
	jnz	1f
	PUTS	"rsdp zero\n"
	jmp	done
1:	mov	$rsdp_sig, %edi
	mov	$8, %ecx
	repe cmpsb
	jne	2f
	PUTS	"rsdp ok\n"
	jmp	done
2:	PUTS	"rsdp bad\n"
done:	mov	$0, %al
	jmp	vm_exit

	.section .rodata
absent:		.asciz	"absent"
rsdp_sig:	.ascii	"RSD PTR "
