#ifndef PYVMM_FASTPATH_H
#define PYVMM_FASTPATH_H

/*
 * The C fast path of the vCPU run loop (pyvmm/fastpath.py drives it).
 *
 * pyvmm_fast_run() loops on KVM_RUN and handles in C only the exits whose
 * outcome Python published in advance:
 *   - a 1-byte OUT to the UART's THR while Python says a THR write is plain
 *     output (DLAB=0, no loopback, THR-empty interrupt disabled): the byte
 *     is appended to a TX buffer shared by the VM's vCPUs, which Python
 *     hands to the UART (Serial16550.transmit);
 *   - a 1-byte IN from the UART's LSR while Python published its value
 *     (only when reading it has no side effect: no error bits to clear);
 *   - port I/O to "sink" ranges (a device that drops writes and reads a
 *     constant byte), for benchmarks.
 * Every other exit is left in kvm_run for Python, which handles it exactly
 * as the Python loop does. Nothing here allocates or makes a syscall other
 * than KVM_RUN (and a futex wait when another thread holds a lock); every
 * field the guest controls is bounds-checked.
 *
 * Coalesced writes: KVM appends writes to registered zones to the VM's
 * coalesced-MMIO ring instead of exiting. After every KVM_RUN the loop
 * drains the ring, oldest first, before it looks at the exit: THR bytes
 * (while a THR write is plain output) go to the TX buffer here; at the first
 * entry C cannot handle it returns PYVMM_FAST_RING, and Python pops the
 * rest one by one (pyvmm_fast_ring_pop) before the exit is handled
 * (pyvmm_fast_pending). So every device sees its accesses in order.
 */

#include <pthread.h>
#include <stdint.h>
#include <linux/kvm.h>

#define PYVMM_FAST_TXBUF 65536          /* bytes the shared TX buffer holds */
#define PYVMM_FAST_MAX_SINKS 8          /* sink ranges per vCPU state */
#define PYVMM_FAST_SINK_PORTS 8         /* ports per sink range (counted per port) */
#define PYVMM_FAST_REASONS 64           /* exit reasons counted (as ExitStats) */

/* pyvmm_fast_run's results (besides -errno from KVM_RUN) */
#define PYVMM_FAST_STOP 0               /* the stop flag is set; no exit pending */
#define PYVMM_FAST_EXIT 1               /* an exit for Python is in kvm_run */
#define PYVMM_FAST_BUDGET 2             /* `budget` exits handled in C; none pending */
#define PYVMM_FAST_RING 3               /* ring entries need Python; then pyvmm_fast_pending() */
#define PYVMM_FAST_HANDLED 4            /* pyvmm_fast_pending(): nothing left for Python */

/* Published UART state and its TX buffer: one per UART, shared by the vCPUs. */
struct pyvmm_fast_uart {
    pthread_mutex_t lock;               /* guards everything below */
    int thr_plain;                      /* THR writes may be buffered here */
    int lsr;                            /* LSR value to answer, or -1: ask Python */
    uint32_t len;                       /* bytes waiting in buf */
    uint64_t full;                      /* THR writes passed to Python: buffer full */
    unsigned char buf[PYVMM_FAST_TXBUF];
};

/* The VM's coalesced-write ring (one page of a vCPU's mapping), shared by
 * the vCPUs and the supervisor: consumers take `lock`. */
struct pyvmm_fast_ring {
    pthread_mutex_t lock;
    struct kvm_coalesced_mmio_ring *ring;
    uint32_t max;                       /* entries the page holds */
    int python_holds;                   /* Python is handling a popped entry: C waits its turn */
    struct pyvmm_fast_uart *uart;       /* THR entries for this UART are taken in C; may be NULL */
    uint16_t uart_base;
    uint64_t thr_out;                   /* THR entries taken in C (only C writes it) */
};

struct pyvmm_fast_sink {
    uint16_t base;
    uint16_t length;                    /* 1..PYVMM_FAST_SINK_PORTS */
    uint8_t fill;                       /* what reads return, every byte */
};

/* One vCPU's loop state; Python fills the configuration, C the counters. */
struct pyvmm_fast {
    /* configuration (Python) */
    int vcpu_fd;
    struct kvm_run *run;
    uint64_t run_size;                  /* bytes mapped at run */
    struct pyvmm_fast_uart *uart;       /* NULL: no UART acceleration */
    uint16_t uart_base;
    struct pyvmm_fast_ring *ring;       /* NULL: no coalesced zones */
    int run_errno;                      /* KVM_RUN's errno behind a PYVMM_FAST_RING, or 0 */
    const int *stop;                    /* non-zero: return PYVMM_FAST_STOP; may be NULL */
    uint32_t budget;                    /* 0: unlimited */
    uint32_t nsinks;
    struct pyvmm_fast_sink sinks[PYVMM_FAST_MAX_SINKS];
    /* counters since Python last merged them (Python zeroes them) */
    uint64_t exits[PYVMM_FAST_REASONS]; /* every exit KVM_RUN returned, by reason */
    uint64_t exits_other;               /* reasons >= PYVMM_FAST_REASONS */
    uint64_t fast;                      /* exits handled here */
    uint64_t thr_out;                   /* fast THR writes */
    uint64_t lsr_in;                    /* fast LSR reads */
    uint64_t sink_counts[PYVMM_FAST_MAX_SINKS][PYVMM_FAST_SINK_PORTS][2];  /* [sink][offset][dir] */
};

/* Initialises the lock; everything else starts zeroed (thr_plain 0, lsr -1). */
int pyvmm_fast_uart_init(struct pyvmm_fast_uart *uart);
/* Publishes what the fast path may do: thr_plain 0/1, lsr 0..255 or -1. */
void pyvmm_fast_uart_publish(struct pyvmm_fast_uart *uart, int thr_plain, int lsr);
/* Moves up to `cap` buffered bytes (oldest first) to `out`; returns how many. */
uint32_t pyvmm_fast_uart_take(struct pyvmm_fast_uart *uart, unsigned char *out, uint32_t cap);

/* Points the ring at `page` (page_size bytes, the coalesced-MMIO page of a
 * vCPU mapping); initialises the lock. */
int pyvmm_fast_ring_init(struct pyvmm_fast_ring *ring, void *page, uint32_t page_size);
/* Takes the entries C handles, then pops the oldest other entry into `out`
 * and returns 1 (Python then holds the ring until pyvmm_fast_ring_release),
 * or returns 0 when the ring is empty. */
int pyvmm_fast_ring_pop(struct pyvmm_fast_ring *ring, struct kvm_coalesced_mmio *out);
void pyvmm_fast_ring_release(struct pyvmm_fast_ring *ring);

/* Runs the vCPU until an exit needs Python, the budget is spent, the stop
 * flag is set (PYVMM_FAST_* above), or KVM_RUN fails (-errno, e.g. -EINTR
 * after a kick). */
int pyvmm_fast_run(struct pyvmm_fast *state);

/* After PYVMM_FAST_RING and the ring drained: -errno if that KVM_RUN failed,
 * PYVMM_FAST_HANDLED if C handled its exit, PYVMM_FAST_EXIT if Python must. */
int pyvmm_fast_pending(struct pyvmm_fast *state);

/* The same checks the loop applies, on the exit currently in `state->run`,
 * without entering the guest: 1 if handled in C, 0 if left for Python.
 * For unit tests (a fake kvm_run buffer) and nothing else. */
int pyvmm_fast_handle_exit(struct pyvmm_fast *state);

#endif
