/*
 * UART and exit macros for assembly guests.
 *
 * They use only %al/%ah/%dx and port I/O, which encode identically in
 * 16-, 32- and 64-bit code, so real.S, long.S and the 32-bit library all
 * expand the same single definition instead of keeping copies.
 */
#ifndef GUESTS_UART_H
#define GUESTS_UART_H

#include "hw.h"

/* outb \val -> \port, via %dx because most of our ports are above 0xff. */
.macro OUTB_DX port, val
	mov	$\port, %dx
	mov	$\val, %al
	out	%al, %dx
.endm

/*
 * Program the UART the way a real driver would: no interrupts,
 * divisor 1 (115200 baud), 8N1, FIFOs on and cleared, DTR|RTS|OUT2.
 * Split in two so lib32.S can rescue already-received input just before
 * the FIFO reset (see uart_init there).  Clobbers %al, %dx.
 */
.macro UART_INIT_LINE
	OUTB_DX	UART_IER, 0x00
	OUTB_DX	UART_LCR, 0x80
	OUTB_DX	UART_DLL, 0x01
	OUTB_DX	UART_DLM, 0x00
	OUTB_DX	UART_LCR, 0x03
.endm

.macro UART_INIT_FIFO
	OUTB_DX	UART_FCR, 0xc7
	OUTB_DX	UART_MCR, 0x0b
.endm

.macro UART_INIT
	UART_INIT_LINE
	UART_INIT_FIFO
.endm

/*
 * Send the byte in %al once the transmitter has room.  The byte waits in
 * %ah because polling LSR needs %al.  Clobbers %ax, %dx.
 */
.macro UART_PUTC
	mov	%al, %ah
	mov	$UART_LSR, %dx
.Luart_putc_wait\@:
	in	%dx, %al
	test	$UART_LSR_THRE, %al
	jz	.Luart_putc_wait\@
	mov	%ah, %al
	mov	$UART_THR, %dx
	out	%al, %dx
.endm

/* Wait for a received byte and return it in %al.  Clobbers %dx. */
.macro UART_GETC
	mov	$UART_LSR, %dx
.Luart_getc_wait\@:
	in	%dx, %al
	test	$UART_LSR_DR, %al
	jz	.Luart_getc_wait\@
	mov	$UART_RBR, %dx
	in	%dx, %al
.endm

/*
 * End the run: status \code through isa-debug-exit, and should that port
 * not exist (the write returns), stop with cli;hlt, which pyvmm reports
 * as status 0.
 */
.macro VM_EXIT code
	mov	$\code, %al
	out	%al, $DEBUG_EXIT_PORT
	VM_HALT
.endm

/* Stop for good.  The loop only matters if something wakes the hlt. */
.macro VM_HALT
.Lvm_halt\@:
	cli
	hlt
	jmp	.Lvm_halt\@
.endm

#endif
