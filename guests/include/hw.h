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

#define UART_IER_RDI    0x01            /* interrupt when a byte is received */
#define UART_MCR_OUT2   0x08            /* PC boards gate the IRQ line on it */

/* 8259A interrupt controllers. */
#define PIC1_CMD        0x20
#define PIC1_DATA       0x21
#define PIC2_CMD        0xa0
#define PIC2_DATA       0xa1
#define PIC_EOI         0x20            /* OCW2: non-specific end of interrupt */

/* MC146818 RTC / CMOS RAM. */
#define CMOS_INDEX      0x70
#define CMOS_DATA       0x71

/* i8042 keyboard controller: command 0xfe pulses the CPU reset line. */
#define I8042_CMD       0x64
#define I8042_RESET     0xfe

/* QEMU fw_cfg, I/O interface: 16-bit selector, byte-wide data. */
#define FW_CFG_SEL      0x510
#define FW_CFG_DATA     0x511
#define FW_CFG_SIGNATURE 0x00
#define FW_CFG_ID       0x01
#define FW_CFG_RAM_SIZE 0x03
#define FW_CFG_NB_CPUS  0x05
#define FW_CFG_CMDLINE_SIZE 0x14
#define FW_CFG_CMDLINE_DATA 0x15
#define FW_CFG_FILE_DIR 0x19

/* Local APIC, xAPIC MMIO at its reset base. */
#define LAPIC_BASE      0xfee00000
#define LAPIC_ID        (LAPIC_BASE + 0x020)    /* bits 31-24 */
#define LAPIC_ICR_LO    (LAPIC_BASE + 0x300)
#define LAPIC_ICR_HI    (LAPIC_BASE + 0x310)

/* QEMU isa-debug-exit: writing v ends the VM with status (v << 1) | 1. */
#define DEBUG_EXIT_PORT 0xf4

/* Top of the stack every guest sets up for itself (pyvmm's ESP at entry). */
#define STACK_TOP       0x8ff0

#endif
