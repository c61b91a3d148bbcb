"""cdef for fastpath.c: the C run loop over the table of declared registers (see fastpath.h)."""

INCLUDES = """
#include "fastpath.h"
"""

TYPES = """
#define PYVMM_FAST_REGS ...
#define PYVMM_FAST_LOG ...
#define PYVMM_FAST_REASONS ...
#define PYVMM_REG_POSTED ...
#define PYVMM_REG_CACHED ...
#define PYVMM_FROM_EXIT ...
#define PYVMM_FROM_RING ...
#define PYVMM_FROM_DOORBELL ...
#define PYVMM_FAST_EXIT ...
#define PYVMM_FAST_STOP ...
#define PYVMM_FAST_BUDGET ...
#define PYVMM_FAST_DRAIN ...

struct pyvmm_fast_reg {
    uint64_t addr;
    uint32_t len;
    uint8_t pio;
    uint8_t kind;
    int32_t active;
    uint64_t value;
    uint64_t count;
    ...;
};

struct pyvmm_fast_table {
    uint32_t nregs;
    struct pyvmm_fast_reg regs[...];
    ...;
};

struct pyvmm_fast_entry {
    uint64_t addr;
    uint8_t pio;
    uint8_t len;
    uint8_t source;
    uint8_t data[8];
    ...;
};

struct pyvmm_fast_log {
    uint32_t head;
    uint32_t count;
    int python_holds;
    int pending;
    struct kvm_coalesced_mmio_ring *ring;
    uint32_t ring_max;
    ...;
};

struct pyvmm_fast {
    int vcpu_fd;
    struct kvm_run *run;
    uint64_t run_size;
    struct pyvmm_fast_table *table;
    struct pyvmm_fast_log *log;
    const int *stop;
    uint32_t budget;
    uint32_t volume;
    uint32_t posted;
    int resume;
    int run_errno;
    uint64_t exits[64];
    uint64_t fast;
    ...;
};
"""

FUNCTIONS = """
int pyvmm_fast_log_init(struct pyvmm_fast_log *log, void *ring, uint32_t ring_bytes);
int pyvmm_fast_log_append(struct pyvmm_fast_log *log, uint64_t addr, int pio, const char *data,
                          uint32_t len, int source);
uint32_t pyvmm_fast_log_take(struct pyvmm_fast_log *log, struct pyvmm_fast_entry *out, uint32_t max);
void pyvmm_fast_log_release(struct pyvmm_fast_log *log);
void pyvmm_fast_reg_publish(struct pyvmm_fast_reg *reg, int active, uint64_t value);
int pyvmm_fast_run(struct pyvmm_fast *state);
int pyvmm_fast_handle_exit(struct pyvmm_fast *state);
"""
