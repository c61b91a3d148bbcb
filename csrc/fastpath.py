"""cdef for fastpath.c: the C run loop that handles the hot exits (see fastpath.h)."""

INCLUDES = """
#include "fastpath.h"
"""

TYPES = """
#define PYVMM_FAST_TXBUF ...
#define PYVMM_FAST_MAX_SINKS ...
#define PYVMM_FAST_SINK_PORTS ...
#define PYVMM_FAST_REASONS ...
#define PYVMM_FAST_STOP ...
#define PYVMM_FAST_EXIT ...
#define PYVMM_FAST_BUDGET ...
#define PYVMM_FAST_RING ...
#define PYVMM_FAST_HANDLED ...

struct pyvmm_fast_uart {
    int thr_plain;
    int lsr;
    uint32_t len;
    uint64_t full;
    ...;
};

struct pyvmm_fast_ring {
    struct kvm_coalesced_mmio_ring *ring;
    uint32_t max;
    int python_holds;
    struct pyvmm_fast_uart *uart;
    uint16_t uart_base;
    uint64_t thr_out;
    ...;
};

struct pyvmm_fast_sink {
    uint16_t base;
    uint16_t length;
    uint8_t fill;
    ...;
};

struct pyvmm_fast {
    int vcpu_fd;
    struct kvm_run *run;
    uint64_t run_size;
    struct pyvmm_fast_uart *uart;
    uint16_t uart_base;
    struct pyvmm_fast_ring *ring;
    int run_errno;
    const int *stop;
    uint32_t budget;
    uint32_t nsinks;
    struct pyvmm_fast_sink sinks[8];
    uint64_t exits[64];
    uint64_t exits_other;
    uint64_t fast;
    uint64_t thr_out;
    uint64_t lsr_in;
    uint64_t sink_counts[8][8][2];
    ...;
};
"""

FUNCTIONS = """
int pyvmm_fast_uart_init(struct pyvmm_fast_uart *uart);
void pyvmm_fast_uart_publish(struct pyvmm_fast_uart *uart, int thr_plain, int lsr);
uint32_t pyvmm_fast_uart_take(struct pyvmm_fast_uart *uart, unsigned char *out, uint32_t cap);
int pyvmm_fast_ring_init(struct pyvmm_fast_ring *ring, void *page, uint32_t page_size);
int pyvmm_fast_ring_pop(struct pyvmm_fast_ring *ring, struct kvm_coalesced_mmio *out);
void pyvmm_fast_ring_release(struct pyvmm_fast_ring *ring);
int pyvmm_fast_run(struct pyvmm_fast *state);
int pyvmm_fast_pending(struct pyvmm_fast *state);
int pyvmm_fast_handle_exit(struct pyvmm_fast *state);
"""
