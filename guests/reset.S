/*
 * reset.bin: print "reset\n", then pulse the CPU reset line through the
 * i8042 keyboard controller (command 0xfe to port 0x64), as PC firmware
 * and kernels do.  QEMU -no-reboot exits with 0; pyvmm ends with status 0.
 * If the VM is still running a while later: "reset failed\n" and outb
 * 0x7e -> 0xf4 (status 0xfd).
 */
#include "guest32.h"

#define I8042_INPUT_FULL 0x02		/* status: controller busy */

	GUEST32_HEAD main
main:
	GUEST32_PROLOGUE
	call	uart_init
	PUTS	"reset\n"
	mov	$0x10000, %ecx		/* wait (bounded) for room, like a driver */
1:	in	$I8042_CMD, %al
	test	$I8042_INPUT_FULL, %al
	jz	2f
	loop	1b
2:	mov	$I8042_RESET, %al
	out	%al, $I8042_CMD
	mov	$100000000, %eax	/* give the host time to act */
	call	tsc_delay
	PUTS	"reset failed\n"
	mov	$0x7e, %al
	jmp	vm_exit
