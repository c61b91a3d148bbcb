/*
 * Busy waits measured by the TSC, for the guests that must give the host
 * or a device time (smp, acpi, reset).  Interface in include/guest32.h.
 * Part of lib/libguest.a.
 */
#include "guest32.h"

	.text
	.code32

	.globl	tsc_delay
tsc_delay:
	push	%ecx
	push	%ebx
	mov	%eax, %ecx
	rdtsc
	mov	%eax, %ebx
1:	pause
	rdtsc
	sub	%ebx, %eax		/* mod 2^32: waits under 2^32 cycles */
	cmp	%ecx, %eax
	jb	1b
	pop	%ebx
	pop	%ecx
	ret
