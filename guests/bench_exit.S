/*
 * bench_exit.bin: N port accesses as fast as the guest can issue them, to
 * measure the host's I/O-exit round trip.  The benchmark patches three
 * dwords in the file: N at image offset 0x24 (param_n), the port at 0x28
 * (param_port, default 0x560) and at 0x2c whether to read (`in`, non-zero)
 * instead of write (`out`, zero: the default).
 */
#include "guest32.h"

	GUEST32_HEAD main
	.globl	param_n, param_port, param_in
param_n:
	.long	100000
param_port:
	.long	0x560		/* clear of the exits.bin test device and fw_cfg (0x510) */
param_in:
	.long	0
main:
	GUEST32_PROLOGUE
	mov	param_n, %ecx
	mov	param_port, %edx
	xor	%eax, %eax
	jecxz	2f			/* N = 0 means no accesses, not 2^32 */
	cmpl	$0, param_in
	jne	3f
	/* Loop bodies kept to the exit itself plus the counter. */
1:	out	%al, %dx
	dec	%ecx
	jnz	1b
	jmp	2f
3:	in	%dx, %al
	dec	%ecx
	jnz	3b
2:	xor	%al, %al		/* status 1 */
	jmp	vm_exit
