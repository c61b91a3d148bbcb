/*
 * QEMU's fw_cfg through the I/O ports (docs/specs/fw_cfg.rst in QEMU): a
 * 16-bit write to 0x510 selects an item and rewinds it, each byte read
 * from 0x511 returns its next byte (0 past its end).  Interface in
 * include/guest32.h.  Part of lib/libguest.a.
 */
#include "guest32.h"

	.text
	.code32

	.globl	fwcfg_select
fwcfg_select:
	mov	$FW_CFG_SEL, %dx
	out	%ax, %dx
	ret

	.globl	fwcfg_read
fwcfg_read:
	mov	$FW_CFG_DATA, %dx
	rep insb
	ret

	.globl	fwcfg_get32
fwcfg_get32:
	push	%ecx
	call	fwcfg_select
	mov	$FW_CFG_DATA, %dx
	mov	$4, %ecx
1:	in	%dx, %al		/* first byte ends up lowest */
	ror	$8, %eax
	loop	1b
	pop	%ecx
	ret
