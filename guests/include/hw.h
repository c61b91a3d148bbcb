/*
 * Hardware constants shared by every guest, in asm (.S) and C alike, so
 * these port numbers exist in exactly one place.  Plain #defines only.
 */
#ifndef GUESTS_HW_H
#define GUESTS_HW_H

/* 16550A UART, COM1. */
#define COM1            0x3f8
#define UART_THR        (COM1 + 0)      /* write: transmit holding */
#define UART_RBR        (COM1 + 0)      /* read: receive buffer */
#define UART_DLL        (COM1 + 0)      /* divisor low, when LCR.DLAB=1 */
#define UART_IER        (COM1 + 1)
#define UART_DLM        (COM1 + 1)      /* divisor high, when LCR.DLAB=1 */
#define UART_FCR        (COM1 + 2)
#define UART_LCR        (COM1 + 3)
#define UART_MCR        (COM1 + 4)
#define UART_LSR        (COM1 + 5)
#define UART_LSR_DR     0x01            /* a received byte is waiting */
#define UART_LSR_THRE   0x20            /* transmitter can take a byte */

/* QEMU isa-debug-exit: writing v ends the VM with status (v << 1) | 1. */
#define DEBUG_EXIT_PORT 0xf4

/* Top of the stack every guest sets up for itself (pyvmm's ESP at entry). */
#define STACK_TOP       0x8ff0

#endif
