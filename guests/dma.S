/*
 * dma.bin: drives the README's example DMA device (a user device at ports
 * 0x580-0x58f, IRQ 5): four 32-bit registers, SOURCE (+0), DESTINATION
 * (+4), LENGTH (+8) and GO/STATUS (+12).
 *
 * It fills SOURCE_BUFFER with a pattern, masks every PIC interrupt and
 * makes IRQ 5 level-triggered in the ELCR (so the PIC's request register
 * follows the line and nothing is delivered), programs a copy of COPY_LENGTH bytes to
 * DESTINATION_BUFFER, writes 1 to GO and polls STATUS until the device says
 * done (2) or failed (3). Then it checks that the copy is exact, that the
 * byte after it is untouched, and that IRQ 5 is pending in the PIC's
 * interrupt request register, acknowledges (STATUS <- 0, the line drops)
 * and checks the request is gone. Last, a copy from outside guest RAM must
 * fail. It prints one line per check and exits with 0x00 when all held
 * (status 1), else 0x01 + the number of the first check that failed.
 */
#include "guest32.h"

#define DMA_PORT	0x580
#define DMA_SOURCE	(DMA_PORT + 0)
#define DMA_DESTINATION	(DMA_PORT + 4)
#define DMA_LENGTH	(DMA_PORT + 8)
#define DMA_GO		(DMA_PORT + 12)
#define DMA_IRQ_BIT	(1 << 5)
#define STATUS_DONE	2
#define STATUS_FAILED	3
#define PIC1_COMMAND	0x20
#define PIC1_DATA	0x21
#define ELCR1		0x4d0		/* edge/level control of the master PIC's lines */
#define OCW3_READ_IRR	0x0a
#define COPY_LENGTH	3000
#define SOURCE_BUFFER	0x200000
#define DESTINATION_BUFFER 0x300000
#define OUTSIDE_RAM	0xe0000000	/* in the MMIO hole below 4 GiB */

	GUEST32_HEAD main
main:
	GUEST32_PROLOGUE
	call	uart_init
	mov	$0xff, %al		/* mask every PIC line: requests show in IRR only */
	outb	%al, $PIC1_DATA
	mov	$DMA_IRQ_BIT, %al	/* IRQ 5 level-triggered: IRR follows the line */
	mov	$ELCR1, %dx
	outb	%al, %dx

	mov	$SOURCE_BUFFER, %edi	/* pattern: byte i = i * 7 + 3 */
	xor	%ecx, %ecx
1:	lea	3(%ecx,%ecx,2), %eax
	lea	(%eax,%ecx,4), %eax
	mov	%al, (%edi,%ecx)
	inc	%ecx
	cmp	$COPY_LENGTH + 1, %ecx	/* one byte more: must not be copied */
	jb	1b
	movb	$0x5a, DESTINATION_BUFFER + COPY_LENGTH

	mov	$SOURCE_BUFFER, %eax
	mov	$DESTINATION_BUFFER, %ebx
	call	dma_copy
	mov	$1, %bl
	cmp	$STATUS_DONE, %eax
	jne	fail
	PUTS	"copy done\n"

	mov	$SOURCE_BUFFER, %esi
	mov	$DESTINATION_BUFFER, %edi
	mov	$COPY_LENGTH, %ecx
	repe cmpsb
	mov	$2, %bl
	jne	fail
	cmpb	$0x5a, DESTINATION_BUFFER + COPY_LENGTH
	mov	$3, %bl
	jne	fail
	PUTS	"copy exact\n"

	call	read_irr
	mov	$4, %bl
	test	$DMA_IRQ_BIT, %al
	jz	fail
	PUTS	"irq 5 pending\n"
	xor	%eax, %eax		/* acknowledge: the device lowers its line */
	mov	$DMA_GO, %dx
	outl	%eax, %dx
	call	read_irr
	mov	$5, %bl
	test	$DMA_IRQ_BIT, %al
	jnz	fail
	PUTS	"irq 5 acknowledged\n"

	mov	$OUTSIDE_RAM, %eax
	mov	$DESTINATION_BUFFER, %ebx
	call	dma_copy
	mov	$6, %bl
	cmp	$STATUS_FAILED, %eax
	jne	fail
	PUTS	"copy from outside RAM refused\n"
	xor	%eax, %eax
	mov	$DMA_GO, %dx
	outl	%eax, %dx
	xor	%al, %al
	jmp	vm_exit

fail:	PUTS	"check failed\n"
	mov	%bl, %al
	jmp	vm_exit

/* Copy COPY_LENGTH bytes from %eax to %ebx; returns the final STATUS in %eax. */
dma_copy:
	mov	$DMA_SOURCE, %dx
	outl	%eax, %dx
	mov	%ebx, %eax
	mov	$DMA_DESTINATION, %dx
	outl	%eax, %dx
	mov	$COPY_LENGTH, %eax
	mov	$DMA_LENGTH, %dx
	outl	%eax, %dx
	mov	$1, %eax
	mov	$DMA_GO, %dx
	outl	%eax, %dx
1:	inl	%dx, %eax		/* busy (1) until the worker is done */
	cmp	$1, %eax
	je	1b
	ret

/* The master PIC's interrupt request register in %al. */
read_irr:
	mov	$OCW3_READ_IRR, %al
	outb	%al, $PIC1_COMMAND
	inb	$PIC1_COMMAND, %al
	ret
