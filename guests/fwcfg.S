/*
 * fwcfg.bin: read QEMU's firmware configuration device (fw_cfg, I/O ports
 * 0x510/0x511) and print what it holds, one item per line:
 *   signature QEMU
 *   id 0x%08x                    (bit 0: traditional interface, bit 1: DMA)
 *   ram_size 0x%016x             (key 0x03)
 *   nb_cpus %u                   (key 0x05)
 *   cmdline_size %u              (key 0x14, with the NUL)
 *   cmdline <text>               (key 0x15, up to 255 bytes)
 *   files %u                     (key 0x19)
 *   file <key as 0x%08x> <size> <name>   (one per file, at most 64)
 * then outb 0 -> 0xf4 (status 1).  Built twice: fwcfg.bin (multiboot) and
 * fwcfg-pvh.elf (-DPVH: an ELF32 booted through PVH, for which QEMU puts
 * the command line into fw_cfg; for multiboot kernels it does not).  A signature other than "QEMU" prints
 * "no fw_cfg" after the signature line and exits with 0x7f (status 0xff).
 */
#include "guest32.h"

#define MAX_FILES	64
#define CMDLINE_MAX	255
#define FILE_ENTRY	64		/* be32 size, be16 key, be16 reserved, name[56] */

#ifdef PVH
	PVH_NOTE main			/* fwcfg-pvh.elf */
	.globl	_start
_start:
#else
	GUEST32_HEAD main
#endif
main:
	GUEST32_PROLOGUE
	call	uart_init

	PUTS	"signature "
	mov	$FW_CFG_SIGNATURE, %ax
	call	fwcfg_get32
	mov	%eax, buf
	movb	$0, buf + 4
	mov	$buf, %esi
	call	print_cstr
	call	print_nl
	cmpl	$0x554d4551, buf	/* "QEMU" */
	je	1f
	PUTS	"no fw_cfg\n"
	mov	$0x7f, %al
	jmp	vm_exit

1:	PUTS	"id "
	mov	$FW_CFG_ID, %ax
	call	fwcfg_get32
	call	print_hex32

	PUTS	"\nram_size "
	mov	$FW_CFG_RAM_SIZE, %ax
	call	fwcfg_select
	mov	$buf, %edi
	mov	$8, %ecx
	call	fwcfg_read
	mov	buf, %eax
	mov	buf + 4, %edx
	call	print_hex64

	PUTS	"\nnb_cpus "
	mov	$FW_CFG_NB_CPUS, %ax
	call	fwcfg_get32
	call	print_dec

	PUTS	"\ncmdline_size "
	mov	$FW_CFG_CMDLINE_SIZE, %ax
	call	fwcfg_get32
	mov	%eax, %ebx
	call	print_dec
	PUTS	"\ncmdline "
	cmp	$CMDLINE_MAX, %ebx
	jbe	1f
	mov	$CMDLINE_MAX, %ebx
1:	mov	$FW_CFG_CMDLINE_DATA, %ax
	call	fwcfg_select
	mov	$buf, %edi
	mov	%ebx, %ecx
	call	fwcfg_read
	movb	$0, (%edi)		/* in case the data has no NUL */
	mov	$buf, %esi
	call	print_cstr

	PUTS	"\nfiles "
	mov	$FW_CFG_FILE_DIR, %ax
	call	fwcfg_get32		/* the count, big-endian */
	bswap	%eax
	mov	%eax, %ebx
	call	print_dec
	call	print_nl
	cmp	$MAX_FILES, %ebx
	jbe	1f
	mov	$MAX_FILES, %ebx
1:	test	%ebx, %ebx		/* fwcfg_get32 left the item after the count */
	jz	done
	mov	$buf, %edi
	mov	$FILE_ENTRY, %ecx
	call	fwcfg_read
	movb	$0, buf + FILE_ENTRY	/* a full-length name has no NUL */
	PUTS	"file "
	movzwl	buf + 4, %eax
	xchg	%al, %ah
	call	print_hex32
	call	print_sp
	mov	buf, %eax
	bswap	%eax
	call	print_dec
	call	print_sp
	mov	$buf + 8, %esi
	call	print_cstr
	call	print_nl
	dec	%ebx
	jmp	1b

done:	mov	$0, %al
	jmp	vm_exit

	.data
buf:	.space	CMDLINE_MAX + 1
