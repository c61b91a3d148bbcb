/*
 * s3.bin: ACPI S3 suspend and resume, as the test kernels of x86
 * virtualisation test suites do it.  It finds the FADT, the FACS and the
 * DSDT's \_S3_, copies a real-mode stub to 0x30008 and writes that address
 * to the FACS's Firmware_Waking_Vector, arms the wake sources `param_n`
 * selects, clears PM1_STS and enters S3 through PM1a_CNT.  The stub, run
 * by the firmware's resume path at CS:IP 3000:0008, records CS, CR0 and
 * PM1_STS, and returns to protected mode, where the guest reports:
 *
 *   s3 1                       SLP_TYP of \_S3_
 *   sleeping
 *   resumed
 *   cs 0x00003000              as the stub found it
 *   cr0 0x00000010             (the X_ vector: 0x00000011)
 *   pm1_sts 0x00008401         PM1_STS on resume: WAK_STS, RTC_STS, TMR_STS
 *   pm1_en 0x00000000          PM1_EN on resume (reset, as QEMU's wake does)
 *   stopped at once            nothing ran after the PM1a_CNT write
 *                              ("ran past the S3 write" otherwise)
 *   rtc_b 0x02                 register B on resume (with the alarm only)
 *   alarm second ok            woken in the alarm's second or the next
 *                              ("woke at second +N" otherwise)
 * then outb 0 -> 0xf4 (status 1).
 *
 * param_n (file offset 0x24), wake sources, default 3:
 *   bit 0  RTC_EN in PM1_EN
 *   bit 1  the RTC alarm: right after a second boundary (UIP seen set,
 *          then clear), seconds alarm = the next second, minutes 0xc0 and
 *          hours 0xff ("don't care"), AIE in register B
 *   bit 2  also X_Firmware_Waking_Vector = resumed_x, a 32-bit entry
 *   bit 3  no waking vector at all (both left 0): firmware reboots
 * With bits 0 and 1 the RTC alarm wakes the machine a second later; with
 * fewer, only the host can (a resume request or the power button).
 * Failures: "no rsdp", "no FACP", "no FACS", "no _S3_" (exit 0x7f); still
 * running ~100M TSC cycles after the S3 write: "s3 failed" (exit 0x7e).
 */
#include "guest32.h"

#define WAKE_BASE	0x30000		/* segment 0x3000: the stub and its data */
#define WAKE_OFFSET	0x0008		/* the stub's IP */
#define WAKE_VECTOR	(WAKE_BASE + WAKE_OFFSET)
/* The wake block, offsets from WAKE_BASE (also the stub's DS offsets). */
#define W_PM1_EVT	0x200		/* u16 PM1a_EVT_BLK, for the stub */
#define W_GDTR		0x208		/* lgdt operand: u16 limit, u32 base */
#define W_CS		0x210		/* u16 CS the stub ran with */
#define W_PM1_STS	0x214		/* u16 PM1_STS the stub read */
#define W_CR0		0x218		/* u32 CR0 the stub found */
#define W_AFTER		0x21c		/* u32 set by code after the S3 write */

#define WAKE_RTC_EN	1
#define WAKE_ALARM	2
#define WAKE_X_VECTOR	4
#define WAKE_NO_VECTOR	8

#define HDR_LENGTH	4
#define HDR_SIZE	36
#define RSDP_RSDT	16
#define FADT_FACS	36
#define FADT_DSDT	40
#define FADT_PM1A_EVT	56
#define FADT_PM1A_CNT	64
#define FACS_WAKING	12
#define FACS_X_WAKING	24
#define PM1_EN		2		/* from PM1a_EVT_BLK */
#define PM1_RTC_EN	0x0400
#define SLP_EN		(1 << 13)

#define RTC_SECONDS	0x00
#define RTC_SECONDS_ALARM 0x01
#define RTC_MINUTES_ALARM 0x03
#define RTC_HOURS_ALARM	0x05
#define RTC_STATUS_A	0x0a
#define RTC_STATUS_B	0x0b
#define RTC_STATUS_C	0x0c
#define STATUS_A_UIP	0x80
#define STATUS_B_AIE	0x20
#define STATUS_B_BINARY	0x04

#define CODE_SEL	0x08
#define DATA_SEL	0x10

/* %al = CMOS byte \index.  Clobbers %eax. */
.macro CMOS_READ index
	mov	$\index, %al
	out	%al, $CMOS_INDEX
	in	$CMOS_DATA, %al
.endm

/* CMOS byte \index = %bl.  Clobbers %eax. */
.macro CMOS_WRITE index
	mov	$\index, %al
	out	%al, $CMOS_INDEX
	mov	%bl, %al
	out	%al, $CMOS_DATA
.endm

	GUEST32_HEAD main
	.globl	param_n
param_n:
	.long	WAKE_RTC_EN | WAKE_ALARM

main:
	GUEST32_PROLOGUE
	call	uart_init

	/* RSDP -> RSDT (32-bit entries, as SeaBIOS reads it) -> FACP. */
	call	acpi_find_rsdp
	jnc	1f
	PUTS	"no rsdp\n"
	jmp	fail
1:	mov	RSDP_RSDT(%esi), %esi
	mov	HDR_LENGTH(%esi), %ecx
	lea	(%esi,%ecx), %ecx	/* end of the entries */
	lea	HDR_SIZE(%esi), %esi
2:	cmp	%ecx, %esi
	jb	3f
	PUTS	"no FACP\n"
	jmp	fail
3:	mov	(%esi), %ebx
	add	$4, %esi
	cmpl	$0x50434146, (%ebx)	/* "FACP" */
	jne	2b

	mov	FADT_FACS(%ebx), %edi
	cmpl	$0x53434146, (%edi)	/* "FACS" */
	je	1f
	PUTS	"no FACS\n"
	jmp	fail
1:	mov	%edi, facs
	mov	FADT_PM1A_EVT(%ebx), %eax
	mov	%ax, WAKE_BASE + W_PM1_EVT
	mov	FADT_PM1A_CNT(%ebx), %eax
	mov	%eax, pm1a_cnt
	mov	FADT_DSDT(%ebx), %esi
	mov	$0x5f33535f, %eax	/* "_S3_" */
	call	acpi_sleep_type
	jnc	1f
	PUTS	"no _S3_\n"
	jmp	fail
1:	mov	%eax, slp_typ
	PUTS	"s3 "
	mov	slp_typ, %eax
	call	print_dec
	call	print_nl

	/* The stub at the waking vector, the GDT it loads, the vectors. */
	mov	$wake16, %esi
	mov	$WAKE_VECTOR, %edi
	mov	$(wake16_end - wake16), %ecx
	rep movsb
	movw	$(gdt_end - gdt - 1), WAKE_BASE + W_GDTR
	movl	$gdt, WAKE_BASE + W_GDTR + 2
	movl	$0, WAKE_BASE + W_AFTER
	mov	facs, %edi
	movl	$0, FACS_WAKING(%edi)
	movl	$0, FACS_X_WAKING(%edi)
	movl	$0, FACS_X_WAKING + 4(%edi)
	testl	$WAKE_NO_VECTOR, param_n
	jnz	1f
	movl	$WAKE_VECTOR, FACS_WAKING(%edi)
	testl	$WAKE_X_VECTOR, param_n
	jz	1f
	movl	$resumed_x, FACS_X_WAKING(%edi)

1:	movzwl	WAKE_BASE + W_PM1_EVT, %edx
	mov	$0xffff, %eax		/* PM1_STS: clear every status bit */
	out	%ax, %dx
	add	$PM1_EN, %edx
	xor	%eax, %eax
	testl	$WAKE_RTC_EN, param_n
	jz	1f
	mov	$PM1_RTC_EN, %eax
1:	out	%ax, %dx
	testl	$WAKE_ALARM, param_n
	jz	1f
	call	arm_alarm

1:	PUTS	"sleeping\n"
	mov	slp_typ, %eax
	shl	$10, %eax
	or	$SLP_EN, %eax
	mov	pm1a_cnt, %edx
	out	%ax, %dx
	jmp	1f			/* ends a TCG block: QEMU stops here too */
1:	movl	$1, WAKE_BASE + W_AFTER
	mov	$100000000, %eax
	call	tsc_delay
	PUTS	"s3 failed\n"
	mov	$0x7e, %al
	jmp	vm_exit

fail:	mov	$0x7f, %al
	jmp	vm_exit

/*
 * The alarm for the second after the next update: wait for an update
 * (UIP set, then clear; bounded), clear register C, set the alarm
 * (seconds + 1, minutes and hours don't care) and AIE.
 */
arm_alarm:
	mov	$1000000, %ecx
1:	CMOS_READ RTC_STATUS_A
	test	$STATUS_A_UIP, %al
	jnz	2f
	loop	1b
2:	mov	$1000000, %ecx
3:	CMOS_READ RTC_STATUS_A
	test	$STATUS_A_UIP, %al
	jz	4f
	loop	3b
4:	CMOS_READ RTC_STATUS_C
	CMOS_READ RTC_SECONDS
	call	decode
	inc	%eax
	cmp	$60, %eax
	jb	5f
	xor	%eax, %eax
5:	mov	%eax, alarm_second
	call	encode
	mov	%al, %bl
	CMOS_WRITE RTC_SECONDS_ALARM
	mov	$0xc0, %bl
	CMOS_WRITE RTC_MINUTES_ALARM
	mov	$0xff, %bl
	CMOS_WRITE RTC_HOURS_ALARM
	CMOS_READ RTC_STATUS_B
	or	$STATUS_B_AIE, %al
	mov	%al, %bl
	CMOS_WRITE RTC_STATUS_B
	ret

/* %eax = the clock byte in %al as a number (BCD unless register B says binary). */
decode:
	push	%ecx
	movzbl	%al, %ecx
	CMOS_READ RTC_STATUS_B
	test	$STATUS_B_BINARY, %al
	mov	%ecx, %eax
	jnz	1f
	and	$0x0f, %ecx
	shr	$4, %eax
	imul	$10, %eax, %eax
	add	%ecx, %eax
1:	pop	%ecx
	ret

/* %eax = the number in %eax (0-99) as a clock byte. */
encode:
	push	%ecx
	push	%edx
	mov	%eax, %ecx
	CMOS_READ RTC_STATUS_B
	test	$STATUS_B_BINARY, %al
	mov	%ecx, %eax
	jnz	1f
	xor	%edx, %edx
	mov	$10, %ecx
	div	%ecx
	shl	$4, %eax
	or	%edx, %eax
1:	pop	%edx
	pop	%ecx
	ret

/*
 * The real-mode stub, copied to the waking vector.  Short: real-mode code
 * is emulated on some hosts.  Its data sits in segment WAKE_BASE >> 4,
 * whatever CS the firmware chose.
 */
	.code16
wake16:
	mov	%cs, %ax
	mov	$(WAKE_BASE >> 4), %bx
	mov	%bx, %ds
	mov	%ax, W_CS
	mov	W_PM1_EVT, %dx
	in	%dx, %ax
	mov	%ax, W_PM1_STS
	mov	%cr0, %eax
	mov	%eax, W_CR0
	lgdtl	W_GDTR
	or	$1, %eax
	mov	%eax, %cr0
	ljmpl	$CODE_SEL, $resumed
wake16_end:
	.code32

/* X_Firmware_Waking_Vector: 32-bit protected mode, flat segments, paging off. */
resumed_x:
	mov	%cs, %ax
	mov	%ax, WAKE_BASE + W_CS
	movzwl	WAKE_BASE + W_PM1_EVT, %edx
	in	%dx, %ax
	mov	%ax, WAKE_BASE + W_PM1_STS
	mov	%cr0, %eax
	mov	%eax, WAKE_BASE + W_CR0
	lgdtl	WAKE_BASE + W_GDTR
	ljmp	$CODE_SEL, $resumed

resumed:
	mov	$DATA_SEL, %ax
	mov	%ax, %ds
	mov	%ax, %es
	mov	%ax, %fs
	mov	%ax, %gs
	mov	%ax, %ss
	mov	$STACK_TOP, %esp
	PUTS	"resumed\ncs "
	movzwl	WAKE_BASE + W_CS, %eax
	call	print_hex32
	PUTS	"\ncr0 "
	mov	WAKE_BASE + W_CR0, %eax
	call	print_hex32
	PUTS	"\npm1_sts "
	movzwl	WAKE_BASE + W_PM1_STS, %eax
	call	print_hex32
	PUTS	"\npm1_en "
	movzwl	WAKE_BASE + W_PM1_EVT, %edx
	add	$PM1_EN, %edx
	xor	%eax, %eax
	in	%dx, %ax
	call	print_hex32
	call	print_nl
	cmpl	$0, WAKE_BASE + W_AFTER
	jne	1f
	PUTS	"stopped at once\n"
	jmp	2f
1:	PUTS	"ran past the S3 write\n"
2:	testl	$WAKE_ALARM, param_n
	jz	3f
	PUTS	"rtc_b 0x"
	CMOS_READ RTC_STATUS_B
	call	print_hex8
	call	print_nl
	CMOS_READ RTC_SECONDS
	call	decode
	sub	alarm_second, %eax	/* seconds since the alarm's, mod 60 */
	jns	4f
	add	$60, %eax
4:	cmp	$1, %eax
	ja	5f
	PUTS	"alarm second ok\n"
	jmp	3f
5:	mov	%eax, %ebx
	PUTS	"woke at second +"
	mov	%ebx, %eax
	call	print_dec
	call	print_nl
3:	mov	$0, %al
	jmp	vm_exit

	.data
	.balign	8
gdt:	.quad	0
	.quad	0x00cf9b000000ffff	/* 0x08: 32-bit code, flat */
	.quad	0x00cf93000000ffff	/* 0x10: data, flat */
gdt_end:
	.balign	4
facs:		.long	0
pm1a_cnt:	.long	0
slp_typ:	.long	0
alarm_second:	.long	0
