/*
 * smp.bin: start the application processors the way firmware and kernels
 * do on real hardware, through the local APIC.
 *
 * The BSP prints "bsp <apic id>", reads the CPU count from fw_cfg
 * (FW_CFG_NB_CPUS), copies a real-mode trampoline to TRAMPOLINE and
 * broadcasts INIT, then twice a start-up IPI with vector TRAMPOLINE >> 12,
 * to all CPUs but itself.  Each AP enters protected mode with our GDT,
 * takes a spinlock, prints "cpu <apic id> up", counts itself and stops
 * (cli; hlt).  The BSP waits, bounded by the TSC, until count - 1 APs
 * have checked in, prints "cpus <n>" (n = 1 + APs seen) and exits with
 * outb n -> 0xf4 (status (n << 1) | 1).  AP lines come in any order.
 * A fw_cfg count of 0 or above 255 prints "bad fw_cfg cpu count" and
 * exits with 0x7f (status 0xff).
 *
 * Built with -DSMP_FLOOD (smp_flood.bin), every CPU then also writes
 * FLOOD_BYTES bytes straight to THR at once, without the lock: byte i of
 * the CPU with APIC id n is 0x80 | n << 5 | (i & 31), so each CPU's stream
 * can be picked out of the interleaved output. The BSP waits (bounded)
 * until the APs are done before it prints "cpus <n>".
 */
#include "guest32.h"

#define TRAMPOLINE	0x10000		/* free in pyvmm's layout and QEMU's */
#define LAPIC_SVR	(LAPIC_BASE + 0x0f0)
#define SVR_ENABLE	0x1ff		/* APIC enabled, spurious vector 0xff */
#define ICR_ALL_BUT_SELF 0x000c0000	/* destination shorthand */
#define ICR_INIT	(ICR_ALL_BUT_SELF | 0x4500)	/* INIT, level assert */
#define ICR_STARTUP	(ICR_ALL_BUT_SELF | 0x4600)	/* start-up, | vector */
#define ICR_PENDING	(1 << 12)	/* delivery status */
#define INIT_DELAY_TSC	10000000	/* the 10 ms and 200 us of the MP */
#define SIPI_DELAY_TSC	1000000		/*   spec, roughly: TSC ~1-3 GHz */
#define AP_WAIT_TSC_HI	2		/* give up after 2 << 32 TSC cycles */

#define CODE_SEL	0x08
#define DATA_SEL	0x10

/* Take the print lock; needs no stack (APs have none before they hold it). */
.macro SPIN_LOCK
.Lspin_try\@:
	lock btsl $0, print_lock
	jnc	.Lspin_done\@
.Lspin_wait\@:
	pause
	testl	$1, print_lock
	jnz	.Lspin_wait\@
	jmp	.Lspin_try\@
.Lspin_done\@:
.endm

	GUEST32_HEAD main
main:
	GUEST32_PROLOGUE
	call	uart_init
	PUTS	"bsp "
	mov	LAPIC_ID, %eax
	shr	$24, %eax
	call	print_dec
	call	print_nl

	mov	$FW_CFG_NB_CPUS, %ax
	call	fwcfg_get32
	mov	%eax, %ebp		/* CPU count */
	dec	%eax
	cmp	$254, %eax		/* 1..255, unsigned */
	jbe	1f
	PUTS	"bad fw_cfg cpu count\n"
	mov	$0x7f, %al
	jmp	vm_exit

1:	cmp	$1, %ebp
	je	wait			/* no APs to start */
	mov	$trampoline, %esi
	mov	$TRAMPOLINE, %edi
	mov	$(trampoline_end - trampoline), %ecx
	rep movsb
	orl	$SVR_ENABLE, LAPIC_SVR
	movl	$0, LAPIC_ICR_HI	/* unused with a shorthand */
	mov	$ICR_INIT, %eax
	call	send_ipi
	mov	$INIT_DELAY_TSC, %eax
	call	tsc_delay
	mov	$(ICR_STARTUP | (TRAMPOLINE >> 12)), %eax
	call	send_ipi
	mov	$SIPI_DELAY_TSC, %eax
	call	tsc_delay
	mov	$(ICR_STARTUP | (TRAMPOLINE >> 12)), %eax
	call	send_ipi		/* ignored by APs already running */

wait:	rdtsc
	add	$AP_WAIT_TSC_HI, %edx
	mov	%eax, %esi		/* deadline in %edi:%esi */
	mov	%edx, %edi
1:	mov	ap_count, %eax
	inc	%eax
	cmp	%ebp, %eax
	jae	2f
	pause
	rdtsc
	sub	%esi, %eax
	sbb	%edi, %edx		/* now - deadline < 0: keep waiting */
	js	1b
2:
#ifdef SMP_FLOOD
	call	flood
	rdtsc
	add	$AP_WAIT_TSC_HI, %edx
	mov	%eax, %esi
	mov	%edx, %edi
3:	mov	flood_done, %eax
	cmp	ap_count, %eax
	jae	4f
	pause
	rdtsc
	sub	%esi, %eax
	sbb	%edi, %edx
	js	3b
4:	mov	$'\n', %al
	mov	$COM1, %dx
	outb	%al, %dx
#endif
	SPIN_LOCK
	PUTS	"cpus "
	mov	ap_count, %eax
	inc	%eax
	mov	%eax, %ebx
	call	print_dec
	call	print_nl
	mov	%bl, %al
	jmp	vm_exit

/* Write %eax to the ICR and wait until the APIC has sent the IPI. */
send_ipi:
	mov	%eax, LAPIC_ICR_LO
1:	testl	$ICR_PENDING, LAPIC_ICR_LO
	jz	2f
	pause
	jmp	1b
2:	ret

/*
 * Runs at TRAMPOLINE:0 in real mode (CS = TRAMPOLINE >> 4, IP = 0), so
 * everything here is addressed relative to `trampoline`, except what it
 * jumps to and loads: the GDT and ap_main stay in the image.
 */
	.code16
trampoline:
	cli
	lgdtl	%cs:(gdt_desc_16 - trampoline)
	mov	%cr0, %eax
	or	$1, %al			/* PE */
	mov	%eax, %cr0
	ljmpl	$CODE_SEL, $ap_main
	.balign	4
gdt_desc_16:
	.word	gdt_end - gdt - 1
	.long	gdt
trampoline_end:

	.code32
ap_main:
	mov	$DATA_SEL, %ax
	mov	%ax, %ds
	mov	%ax, %es
	mov	%ax, %ss
	SPIN_LOCK
	mov	$ap_stack_top, %esp	/* one AP at a time holds the lock */
	PUTS	"cpu "
	mov	LAPIC_ID, %eax
	shr	$24, %eax
	call	print_dec
	PUTS	" up\n"
	incl	ap_count
	movl	$0, print_lock		/* release: stores are ordered on x86 */
#ifdef SMP_FLOOD
	call	flood
	lock incl flood_done
#endif
	jmp	vm_halt

#ifdef SMP_FLOOD
#define FLOOD_BYTES	20000
/* FLOOD_BYTES bytes of this CPU's stream to THR; clobbers %eax-%edx. */
flood:
	mov	LAPIC_ID, %ebx
	shr	$24, %ebx
	shl	$5, %ebx
	or	$0x80, %ebx		/* 0x80 | id << 5 */
	xor	%ecx, %ecx
	mov	$COM1, %dx
1:	mov	%ecx, %eax
	and	$31, %eax
	or	%ebx, %eax
	outb	%al, %dx
	inc	%ecx
	cmp	$FLOOD_BYTES, %ecx
	jb	1b
	ret
#endif

	.section .rodata
	.balign	8
gdt:	.quad	0
	.quad	0x00cf9a000000ffff	/* CODE_SEL: flat 32-bit code */
	.quad	0x00cf92000000ffff	/* DATA_SEL: flat data */
gdt_end:

	.data
	.balign	4
ap_count:	.long	0
print_lock:	.long	0
flood_done:	.long	0
ap_stack:	.space	256
ap_stack_top:
