/*
 * powerbutton.bin: an ACPI-aware guest that powers off when the host presses
 * the ACPI power button. Prints "waiting for the power button\n", enables the
 * button's event (PWRBTN_EN in PM1_EN), then polls PM1_STS (at the PM block
 * the FADT gives pyvmm's and QEMU q35's machines: 0x600) until PWRBTN_STS is
 * set, acknowledges it (write 1 to clear), prints "power button\n" and enters
 * S5 (SLP_TYP 0, the DSDT's \_S5, with SLP_EN). The VM ends with status 0.
 * If it is still running a while later: "poweroff failed" and 0x7e -> 0xf4.
 */
#include "guest32.h"

#define PM1_STS		0x600
#define PM1_EN		0x602
#define PM1_CNT		0x604
#define PWRBTN		0x0100		/* PWRBTN_STS / PWRBTN_EN */
#define SLP_EN		0x2000

	GUEST32_HEAD main
main:
	GUEST32_PROLOGUE
	call	uart_init
	mov	$PM1_EN, %dx
	mov	$PWRBTN, %ax
	outw	%ax, %dx
	PUTS	"waiting for the power button\n"
1:	mov	$PM1_STS, %dx
	inw	%dx, %ax
	test	$PWRBTN, %ax
	jnz	2f
	mov	$2000, %ecx		/* between polls, a little work without exits */
3:	pause
	loop	3b
	jmp	1b
2:	mov	$PWRBTN, %ax		/* acknowledge: write 1 to clear */
	outw	%ax, %dx
	PUTS	"power button\n"
	mov	$PM1_CNT, %dx
	mov	$SLP_EN, %ax		/* SLP_TYP 0: S5 */
	outw	%ax, %dx
	mov	$100000000, %eax
	call	tsc_delay
	PUTS	"poweroff failed\n"
	mov	$0x7e, %al
	jmp	vm_exit
