/*
 * replay.bin: the guest half of pyvmm.testing.replay_on_kvm.  It performs,
 * with the real instructions, the device accesses of a program the host
 * wrote into guest memory, stores what each read returned, and exits.
 *
 * The program: at PROGRAM (0x200000) an array of 24-byte records
 *
 *   +0  u8  kind       0 = port I/O, 1 = MMIO, 0xff = end of program
 *   +1  u8  direction  0 = read, 1 = write
 *   +2  u8  size       port I/O 1, 2, 4; MMIO 1, 2, 4, 8
 *   +3  u8  reserved   0
 *   +4  u32 count      port I/O: 1 = one in/out, n > 1 = rep ins/outs of n
 *                      elements; MMIO: must be 1
 *   +8  u64 address    port (< 0x10000) or guest-physical MMIO address
 *                      (< 4 GiB: this guest runs without paging)
 *   +16 u64 data       a single write: the value (its low `size` bytes);
 *                      rep outs: the guest address of the size*count bytes;
 *                      reads: unused
 *
 * The results: at RESULTS (0x300000)
 *
 *   +0  u32 magic      "RPLY" (0x594c5052) once the guest started
 *   +4  u32 done       records performed
 *   +8  u32 state      0 running, 1 finished, 2 stopped at a bad record
 *   +12 u32 reserved
 *   +16 ...            the bytes every read returned, packed in program
 *                      order (size * count bytes per read record)
 *
 * 8-byte MMIO uses MMX `movq` (CR0.EM and CR0.TS are clear at entry), the
 * one 64-bit memory move KVM's instruction emulator performs as a single
 * access in 32-bit code.  Ends with `outb 0x2a -> 0xf4` (status 0x55);
 * a bad record ends it with `outb 0x7f` (status 0xff).  Prints nothing.
 * Keep the constants in step with pyvmm/testing/replay.py.
 */
#include "guest32.h"

#define PROGRAM		0x200000
#define RESULTS		0x300000
#define RES_MAGIC	(RESULTS + 0)
#define RES_DONE	(RESULTS + 4)
#define RES_STATE	(RESULTS + 8)
#define RES_DATA	(RESULTS + 16)
#define MAGIC		0x594c5052
#define RECORD_SIZE	24
#define KIND_PIO	0
#define KIND_MMIO	1
#define KIND_END	0xff
#define DIR_WRITE	1
#define STATE_DONE	1
#define STATE_BAD	2
#define EXIT_DONE	0x2a
#define EXIT_BAD	0x7f

/* Record fields, relative to %ebp. */
#define R_KIND		0(%ebp)
#define R_DIR		1(%ebp)
#define R_SIZE		2(%ebp)
#define R_COUNT		4(%ebp)
#define R_ADDR		8(%ebp)
#define R_ADDR_HI	12(%ebp)
#define R_DATA		16(%ebp)

/*
 * Registers: %ebp the current record, %edi the results cursor, %edx the
 * port or MMIO address, %eax the size, %ecx the count.
 */
	GUEST32_HEAD main
main:
	GUEST32_PROLOGUE
	movl	$MAGIC, RES_MAGIC
	mov	$PROGRAM, %ebp
	mov	$RES_DATA, %edi

next:
	movzbl	R_KIND, %eax
	cmp	$KIND_END, %eax
	je	done
	cmpl	$0, R_ADDR_HI
	jne	bad
	cmpb	$DIR_WRITE, R_DIR
	ja	bad
	mov	R_ADDR, %edx
	mov	R_COUNT, %ecx
	cmp	$KIND_PIO, %eax
	je	pio
	cmp	$KIND_MMIO, %eax
	je	mmio
	jmp	bad

advance:
	incl	RES_DONE
	add	$RECORD_SIZE, %ebp
	jmp	next

/* ------------------------------------------------------------ port I/O */
pio:
	cmp	$0xffff, %edx
	ja	bad
	movzbl	R_SIZE, %eax
	test	%ecx, %ecx
	jz	bad
	cmp	$1, %ecx
	jne	pio_string
	cmpb	$DIR_WRITE, R_DIR
	je	pio_out

	cmp	$1, %eax
	je	1f
	cmp	$2, %eax
	je	2f
	cmp	$4, %eax
	je	4f
	jmp	bad
1:	in	%dx, %al
	mov	%al, (%edi)
	inc	%edi
	jmp	advance
2:	in	%dx, %ax
	mov	%ax, (%edi)
	add	$2, %edi
	jmp	advance
4:	in	%dx, %eax
	mov	%eax, (%edi)
	add	$4, %edi
	jmp	advance

pio_out:
	cmp	$1, %eax
	je	1f
	cmp	$2, %eax
	je	2f
	cmp	$4, %eax
	je	4f
	jmp	bad
1:	mov	R_DATA, %al
	out	%al, %dx
	jmp	advance
2:	mov	R_DATA, %ax
	out	%ax, %dx
	jmp	advance
4:	mov	R_DATA, %eax
	out	%eax, %dx
	jmp	advance

pio_string:				/* rep ins/outs of %ecx elements */
	cmpb	$DIR_WRITE, R_DIR
	je	pio_outs
	cmp	$1, %eax		/* rep ins stores at %edi and advances it */
	je	1f
	cmp	$2, %eax
	je	2f
	cmp	$4, %eax
	je	4f
	jmp	bad
1:	rep insb
	jmp	advance
2:	rep insw
	jmp	advance
4:	rep insl
	jmp	advance

pio_outs:
	mov	R_DATA, %esi
	cmp	$1, %eax
	je	1f
	cmp	$2, %eax
	je	2f
	cmp	$4, %eax
	je	4f
	jmp	bad
1:	rep outsb
	jmp	advance
2:	rep outsw
	jmp	advance
4:	rep outsl
	jmp	advance

/* ---------------------------------------------------------------- MMIO */
mmio:
	cmp	$1, %ecx
	jne	bad
	movzbl	R_SIZE, %eax
	mov	%edx, %ebx
	cmpb	$DIR_WRITE, R_DIR
	je	mmio_write

	cmp	$1, %eax
	je	1f
	cmp	$2, %eax
	je	2f
	cmp	$4, %eax
	je	4f
	cmp	$8, %eax
	je	8f
	jmp	bad
1:	mov	(%ebx), %al
	mov	%al, (%edi)
	inc	%edi
	jmp	advance
2:	mov	(%ebx), %ax
	mov	%ax, (%edi)
	add	$2, %edi
	jmp	advance
4:	mov	(%ebx), %eax
	mov	%eax, (%edi)
	add	$4, %edi
	jmp	advance
8:	movq	(%ebx), %mm0
	movq	%mm0, (%edi)
	add	$8, %edi
	jmp	advance

mmio_write:
	cmp	$1, %eax
	je	1f
	cmp	$2, %eax
	je	2f
	cmp	$4, %eax
	je	4f
	cmp	$8, %eax
	je	8f
	jmp	bad
1:	mov	R_DATA, %al
	mov	%al, (%ebx)
	jmp	advance
2:	mov	R_DATA, %ax
	mov	%ax, (%ebx)
	jmp	advance
4:	mov	R_DATA, %eax
	mov	%eax, (%ebx)
	jmp	advance
8:	movq	R_DATA, %mm0
	movq	%mm0, (%ebx)
	jmp	advance

/* ------------------------------------------------------------- endings */
done:
	movl	$STATE_DONE, RES_STATE
	VM_EXIT	EXIT_DONE

bad:
	movl	$STATE_BAD, RES_STATE
	VM_EXIT	EXIT_BAD
