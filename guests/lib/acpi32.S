/*
 * Finding the ACPI tables as an OS does, for the guests that use them (acpi,
 * s3).  Interface in include/guest32.h.  Part of lib/libguest.a.
 */
#include "guest32.h"

#define BIOS_AREA	0xe0000
#define BIOS_AREA_END	0x100000
#define RSDP_V1_SIZE	20
#define HDR_LENGTH	4
#define HDR_SIZE	36
#define AML_PACKAGE	0x12
#define AML_ZERO	0x00
#define AML_ONE		0x01
#define AML_BYTE	0x0a

	.text
	.code32

/* %eax = sum of the %ecx bytes at (%esi) mod 256; ZF=1 when 0.  Clobbers %edx. */
	.globl	acpi_checksum
acpi_checksum:
	push	%ecx
	push	%esi
	xor	%edx, %edx
1:	lodsb
	add	%al, %dl
	loop	1b
	mov	%edx, %eax
	test	%eax, %eax
	pop	%esi
	pop	%ecx
	ret

/*
 * %esi = the first "RSD PTR " with a valid 20-byte checksum on a 16-byte
 * boundary of 0xe0000-0xfffff; CF=1 when there is none.  Clobbers %eax,
 * %ecx, %edx.
 */
	.globl	acpi_find_rsdp
acpi_find_rsdp:
	mov	$BIOS_AREA, %esi
1:	cmpl	$0x20445352, (%esi)	/* "RSD " */
	jne	2f
	cmpl	$0x20525450, 4(%esi)	/* "PTR " */
	jne	2f
	mov	$RSDP_V1_SIZE, %ecx
	call	acpi_checksum
	jnz	2f
	clc
	ret
2:	add	$16, %esi
	cmp	$BIOS_AREA_END, %esi
	jb	1b
	stc
	ret

/*
 * The first element of the sleep-state package named %eax ("_S5_" as a
 * little-endian u32) in the DSDT at %esi: its SLP_TYP in %eax, CF=0.
 * CF=1 when the name is missing (%eax = 0) or not followed by a package
 * whose first element is ZeroOp, OneOp or BytePrefix (%eax = 1).
 * Clobbers %edx, %edi.
 */
	.globl	acpi_sleep_type
acpi_sleep_type:
	push	%esi
	mov	HDR_LENGTH(%esi), %edi
	lea	-8(%esi,%edi), %edi	/* last place the name + 4 bytes can start */
	add	$HDR_SIZE, %esi
1:	cmp	%edi, %esi
	ja	3f
	cmp	%eax, (%esi)
	je	2f
	inc	%esi
	jmp	1b
2:	cmpb	$AML_PACKAGE, 4(%esi)
	jne	4f
	movzbl	5(%esi), %eax		/* PkgLength lead byte: bits 7-6 = */
	shr	$6, %eax		/*   how many bytes follow it */
	lea	7(%esi,%eax), %esi	/* skip PkgLength and NumElements */
	movzbl	(%esi), %eax
	cmp	$AML_ZERO, %al		/* ZeroOp and OneOp are the value */
	je	5f
	cmp	$AML_ONE, %al
	je	5f
	cmp	$AML_BYTE, %al
	jne	4f
	movzbl	1(%esi), %eax
5:	pop	%esi
	clc
	ret
3:	xor	%eax, %eax
	pop	%esi
	stc
	ret
4:	mov	$1, %eax
	pop	%esi
	stc
	ret
