/*
 * acpi.bin: find the ACPI tables as an OS does, check them, and power the
 * VM off through the FADT's PM1a control block with the DSDT's \_S5 value.
 * Prints, one per line:
 *   rsdp ok <revision>         (found on a 16-byte boundary in 0xe0000-0xfffff)
 *   XSDT ok | RSDT ok          (the XSDT when revision >= 2 and it is given)
 *   <SIG> ok | <SIG> bad       (each table the root lists, by its checksum)
 *   DSDT ok | DSDT bad         (from the FADT: X_DSDT, else DSDT)
 *   pm1a_cnt 0x%08x
 *   s5 <SLP_TYP>               (first element of the _S5_ package)
 * then outw (SLP_TYP << 10) | SLP_EN -> PM1a_CNT: the VM powers off.
 * Failures print a line and exit with outb 0x7f -> 0xf4 (status 0xff):
 * "no rsdp", "no FACP", "no _S5_", "bad _S5_"; if the VM is still running
 * after the write, "poweroff failed" and 0x7e (status 0xfd).
 */
#include "guest32.h"

#define SLP_EN		(1 << 13)

/* Table header: signature, u32 length, u8 revision, u8 checksum, ... (36 bytes). */
#define HDR_LENGTH	4
#define HDR_SIZE	36
/* RSDP */
#define RSDP_REVISION	15
#define RSDP_RSDT	16
#define RSDP_LENGTH	20
#define RSDP_XSDT	24
/* FADT */
#define FADT_DSDT	40
#define FADT_PM1A_CNT	64
#define FADT_X_DSDT	140

	GUEST32_HEAD main
main:
	GUEST32_PROLOGUE
	call	uart_init

	call	acpi_find_rsdp
	jnc	found
	PUTS	"no rsdp\n"
	jmp	fail

found:	mov	%esi, %ebx		/* RSDP */
	movzbl	RSDP_REVISION(%ebx), %ebp
	xor	%eax, %eax
	cmp	$2, %ebp		/* revision 2+: the extended checksum too */
	jb	1f
	mov	RSDP_LENGTH(%ebx), %ecx
	call	acpi_checksum
1:	mov	%eax, %ecx
	PUTS	"rsdp "
	mov	%ecx, %eax
	call	print_ok
	call	print_sp
	mov	%ebp, %eax
	call	print_dec
	call	print_nl

	/* The root: XSDT (8-byte entries) if given, else RSDT (4-byte). */
	mov	$4, %ebp		/* entry size */
	mov	RSDP_RSDT(%ebx), %esi
	cmpb	$2, RSDP_REVISION(%ebx)
	jb	1f
	cmpl	$0, RSDP_XSDT(%ebx)
	je	1f
	mov	RSDP_XSDT(%ebx), %esi
	mov	$8, %ebp
1:	call	print_table		/* "XSDT ok" */
	mov	HDR_LENGTH(%esi), %edi
	add	%esi, %edi		/* end of the entries */
	lea	HDR_SIZE(%esi), %ebx
	xor	%ecx, %ecx		/* the FADT, when seen */
2:	cmp	%edi, %ebx
	jae	3f
	mov	(%ebx), %esi
	call	print_table
	cmpl	$0x50434146, (%esi)	/* "FACP" */
	jne	4f
	mov	%esi, %ecx
4:	add	%ebp, %ebx
	jmp	2b
3:	test	%ecx, %ecx
	jnz	1f
	PUTS	"no FACP\n"
	jmp	fail

1:	mov	%ecx, %ebx		/* FADT */
	mov	FADT_DSDT(%ebx), %esi
	cmpl	$FADT_X_DSDT + 8, HDR_LENGTH(%ebx)
	jb	2f
	cmpl	$0, FADT_X_DSDT(%ebx)
	je	2f
	mov	FADT_X_DSDT(%ebx), %esi
2:	call	print_table		/* "DSDT ok" */
	PUTS	"pm1a_cnt "
	mov	FADT_PM1A_CNT(%ebx), %eax
	mov	%eax, %ebx		/* the port, from here on */
	call	print_hex32
	call	print_nl

	mov	$0x5f35535f, %eax	/* "_S5_" */
	call	acpi_sleep_type
	jnc	3f
	test	%eax, %eax
	jz	no_s5
	jmp	bad_s5
3:	mov	%eax, %ebp
	PUTS	"s5 "
	mov	%ebp, %eax
	call	print_dec
	call	print_nl

	mov	%ebp, %eax
	shl	$10, %eax
	or	$SLP_EN, %eax
	mov	%ebx, %edx
	out	%ax, %dx
	mov	$100000000, %eax	/* give the host time to act */
	call	tsc_delay
	PUTS	"poweroff failed\n"
	mov	$0x7e, %al
	jmp	vm_exit

no_s5:	PUTS	"no _S5_\n"
	jmp	fail
bad_s5:	PUTS	"bad _S5_\n"
fail:	mov	$0x7f, %al
	jmp	vm_exit

/* "ok" if %eax is 0, else "bad".  Clobbers %eax, %edx. */
print_ok:
	test	%eax, %eax
	jnz	1f
	PUTS	"ok"
	ret
1:	PUTS	"bad"
	ret

/* "<signature> ok|bad\n" for the table at %esi.  Clobbers %eax, %edx. */
print_table:
	push	%ecx
	push	%esi
	mov	$4, %ecx
1:	lodsb
	call	uart_putc
	loop	1b
	call	print_sp
	pop	%esi
	mov	HDR_LENGTH(%esi), %ecx
	call	acpi_checksum
	call	print_ok
	call	print_nl
	pop	%ecx
	ret
