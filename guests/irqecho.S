/*
 * irqecho.bin: echo UART input from the interrupt handler, which proves
 * the UART raises ISA IRQ 4 and that it reaches the CPU through the 8259.
 *
 * Remaps the PICs (master to vectors 0x20-0x27, slave 0x28-0x2f), unmasks
 * only IRQ 4, loads an IDT, sets the receive FIFO trigger to 1 byte, IER
 * to "received data available" and MCR.OUT2, prints "irqecho ready\n",
 * then sleeps in `sti; hlt`.  The handler (vector 0x24) echoes every byte
 * waiting (LSR.DR) and sends a non-specific EOI; 0x04 (EOT, not echoed)
 * prints "\nbye\n" and exits with outb 0 -> 0xf4 (status 1).
 * Send the input after the prompt: bytes the UART received before
 * uart_init are stashed and come out only with the first interrupt.
 * Any exception prints "exception\n" and exits with 0x7e (status 0xfd).
 */
#include "guest32.h"

#define EOT		0x04
#define PIC1_VECTOR	0x20
#define PIC2_VECTOR	0x28
#define UART_IRQ	4
#define UART_VECTOR	(PIC1_VECTOR + UART_IRQ)
#define NVECTORS	0x30		/* exceptions and both PICs */
#define GATE_INT32	0x8e00		/* present, DPL 0, 32-bit interrupt gate */
#define FCR_TRIGGER_1	0x01		/* FIFO stays on (no flush), 1-byte trigger */

	GUEST32_HEAD main
main:
	GUEST32_PROLOGUE
	call	uart_init

	/* IDT: exceptions -> fault, PIC vectors -> spurious, except the UART. */
	mov	$idt, %edi
	xor	%ecx, %ecx
1:	mov	$fault, %eax
	cmp	$PIC1_VECTOR, %ecx
	jb	2f
	mov	$spurious, %eax
	cmp	$UART_VECTOR, %ecx
	jne	2f
	mov	$uart_isr, %eax
2:	mov	%ax, (%edi)		/* offset 15..0 */
	mov	%cs, 2(%edi)
	movw	$GATE_INT32, 4(%edi)
	shr	$16, %eax
	mov	%ax, 6(%edi)		/* offset 31..16 */
	add	$8, %edi
	inc	%ecx
	cmp	$NVECTORS, %ecx
	jb	1b
	lidt	idt_desc

	/* 8259 pair: ICW1 edge + ICW4, ICW2 vector base, ICW3 cascade on IRQ 2, ICW4 8086. */
	OUTB_DX	PIC1_CMD, 0x11
	OUTB_DX	PIC2_CMD, 0x11
	OUTB_DX	PIC1_DATA, PIC1_VECTOR
	OUTB_DX	PIC2_DATA, PIC2_VECTOR
	OUTB_DX	PIC1_DATA, 0x04
	OUTB_DX	PIC2_DATA, 0x02
	OUTB_DX	PIC1_DATA, 0x01
	OUTB_DX	PIC2_DATA, 0x01
	OUTB_DX	PIC1_DATA, (0xff & ~(1 << UART_IRQ))	/* OCW1: masks */
	OUTB_DX	PIC2_DATA, 0xff

	OUTB_DX	UART_FCR, FCR_TRIGGER_1
	OUTB_DX	UART_MCR, 0x03 | UART_MCR_OUT2	/* DTR | RTS | OUT2 */
	OUTB_DX	UART_IER, UART_IER_RDI
	PUTS	"irqecho ready\n"
1:	sti
	hlt
	jmp	1b

uart_isr:
	pusha
1:	call	uart_trygetc
	jc	2f
	cmp	$EOT, %al
	je	bye
	call	uart_putc
	jmp	1b
2:	mov	$PIC_EOI, %al
	out	%al, $PIC1_CMD
	popa
	iret

bye:	PUTS	"\nbye\n"
	mov	$0, %al
	jmp	vm_exit

/* IRQ 7/15 spurious interrupts (and masked lines): no EOI, by the book. */
spurious:
	iret

fault:	PUTS	"exception\n"
	mov	$0x7e, %al
	jmp	vm_exit

	.section .rodata
	.balign	4
	.word	0
idt_desc:
	.word	NVECTORS * 8 - 1
	.long	idt

	.data
	.balign	8
idt:	.space	NVECTORS * 8
