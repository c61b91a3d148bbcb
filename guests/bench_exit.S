/*
 * bench_exit.bin: N port writes as fast as the guest can issue them, to
 * measure the host's I/O-exit round trip.  N is the dword at image
 * offset 0x24 (param_n), which the benchmark patches in the file.
 */
#include "guest32.h"

#define BENCH_PORT	0x560	/* clear of the exits.bin test device and fw_cfg (0x510) */

	GUEST32_HEAD main
	.globl	param_n
param_n:
	.long	100000
main:
	GUEST32_PROLOGUE
	mov	param_n, %ecx
	mov	$BENCH_PORT, %dx
	xor	%eax, %eax
	jecxz	2f			/* N = 0 means no writes, not 2^32 */
	/* Loop body kept to the exit itself plus the counter. */
1:	out	%al, %dx
	dec	%ecx
	jnz	1b
2:	xor	%al, %al		/* status 1 */
	jmp	vm_exit
