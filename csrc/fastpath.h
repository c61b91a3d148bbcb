#ifndef PYVMM_FASTPATH_H
#define PYVMM_FASTPATH_H

/*
 * The C fast path of the vCPU run loop (pyvmm/run/fast.py drives it).
 *
 * pyvmm_fast_run() loops on KVM_RUN and handles in C only what a table of
 * registers, compiled in Python from the devices' declarations
 * (pyvmm/devices/bus.py), allows it to:
 *   - a read of exactly a CACHED register whose value the device published:
 *     C answers the value;
 *   - a write inside a POSTED range while the device allows posting: C
 *     appends it to the VM's deferred-write log, for Python to deliver.
 * Every other exit is left in kvm_run for Python. The table knows nothing
 * of devices: it holds addresses, sizes, kinds and values.
 *
 * The deferred-write log is the VM's one queue of writes that reach their
 * device late. It is fed by this loop (posted writes that exited), by KVM's
 * coalesced ring (posted writes that did not exit: C moves the ring's
 * entries into the log, oldest first, after every KVM_RUN), and by Python
 * (doorbell writes counted by ioeventfds). Python delivers it, oldest first,
 * before any device is accessed; `pending` says whether there is anything
 * to deliver, or Python is delivering it now.
 *
 * Nothing here allocates or makes a system call other than KVM_RUN (and a
 * futex wait when another thread holds the log lock). Every field the guest
 * controls is bounds-checked before it is used.
 */

#include <pthread.h>
#include <stdint.h>
#include <linux/kvm.h>

#define PYVMM_FAST_REGS 64              /* declared registers per VM */
#define PYVMM_FAST_LOG 4096             /* deferred writes the log holds */
#define PYVMM_FAST_REASONS 64           /* exit reasons counted (as ExitStats) */

/* Register kinds */
#define PYVMM_REG_POSTED 1              /* [addr, addr+len): writes may be queued */
#define PYVMM_REG_CACHED 2              /* exactly len bytes at addr: reads may be answered */

/* Where a deferred write came from (counted differently) */
#define PYVMM_FROM_EXIT 0               /* an exit C handled */
#define PYVMM_FROM_RING 1               /* KVM's coalesced ring: no exit */
#define PYVMM_FROM_DOORBELL 2           /* an ioeventfd: no exit */

/* pyvmm_fast_run's results, besides -errno from KVM_RUN: 0 as KVM_RUN's own */
#define PYVMM_FAST_EXIT 0               /* an exit for Python is in kvm_run */
#define PYVMM_FAST_STOP 1               /* the stop flag is set; no exit pending */
#define PYVMM_FAST_BUDGET 2             /* `budget` exits handled in C, or `volume` posted; none pending */
#define PYVMM_FAST_DRAIN 3              /* the log is full: Python drains it and calls again */

struct pyvmm_fast_reg {
    uint64_t addr;
    uint32_t len;
    uint8_t pio;
    uint8_t kind;
    int32_t active;                     /* posted: may queue now; cached: value is valid */
    uint64_t value;                     /* cached: the answer, little-endian */
    uint64_t count;                     /* accesses C handled (only C writes it) */
};

/* The VM's registers, shared by its vCPUs; Python changes `active` and
 * `value` at any time (atomically), the rest before the vCPUs run. */
struct pyvmm_fast_table {
    uint32_t nregs;
    struct pyvmm_fast_reg regs[PYVMM_FAST_REGS];
};

struct pyvmm_fast_entry {
    uint64_t addr;
    uint8_t pio;
    uint8_t len;                        /* 1..8 */
    uint8_t source;                     /* PYVMM_FROM_* */
    uint8_t data[8];
};

struct pyvmm_fast_log {
    pthread_mutex_t lock;               /* guards everything below */
    uint32_t head;                      /* oldest entry */
    uint32_t count;
    int python_holds;                   /* Python is delivering entries it took */
    int pending;                        /* count || python_holds: read without the lock */
    struct kvm_coalesced_mmio_ring *ring;   /* KVM's ring, or NULL */
    uint32_t ring_max;                  /* entries the ring page holds */
    struct pyvmm_fast_entry entries[PYVMM_FAST_LOG];
};

/* One vCPU's loop state; Python fills the configuration, C the counters. */
struct pyvmm_fast {
    int vcpu_fd;
    struct kvm_run *run;
    uint64_t run_size;                  /* bytes mapped at run */
    struct pyvmm_fast_table *table;
    struct pyvmm_fast_log *log;
    const int *stop;                    /* non-zero: return PYVMM_FAST_STOP; may be NULL */
    uint32_t budget;                    /* 0: unlimited */
    uint32_t volume;                    /* posted writes that end a C call early (PYVMM_FAST_BUDGET), 0: never */
    uint32_t posted;                    /* posted writes C took since Python zeroed it */
    int resume;                         /* an exit (or run_errno) waits behind a PYVMM_FAST_DRAIN */
    int run_errno;                      /* KVM_RUN's errno, while resume is set */
    /* counters since Python last merged them (Python zeroes them) */
    uint64_t exits[PYVMM_FAST_REASONS]; /* exits handled here, by reason */
    uint64_t fast;                      /* exits handled here */
};

/* Initialises the lock; `ring` (KVM's coalesced page of ring_bytes bytes) may be NULL. */
int pyvmm_fast_log_init(struct pyvmm_fast_log *log, void *ring, uint32_t ring_bytes);
/* Appends one write (Python's doorbells); 0 when the log is full. */
int pyvmm_fast_log_append(struct pyvmm_fast_log *log, uint64_t addr, int pio, const char *data,
                          uint32_t len, int source);
/* Moves the ring into the log, then copies up to `max` oldest entries to
 * `out` and removes them; Python then holds the log (pending stays set)
 * until pyvmm_fast_log_release. Returns how many. */
uint32_t pyvmm_fast_log_take(struct pyvmm_fast_log *log, struct pyvmm_fast_entry *out, uint32_t max);
void pyvmm_fast_log_release(struct pyvmm_fast_log *log);

/* Publishes a register's state: active 0/1, and the value of a cached one. */
void pyvmm_fast_reg_publish(struct pyvmm_fast_reg *reg, int active, uint64_t value);

/* Runs the vCPU until an exit needs Python (PYVMM_FAST_EXIT, 0: the same
 * contract as a bare KVM_RUN), the budget is spent, the stop flag is set,
 * the log is full (PYVMM_FAST_*), or KVM_RUN fails (-errno, e.g. -EINTR
 * after a kick). After PYVMM_FAST_DRAIN it first finishes the exit that was
 * waiting, so Python just drains and calls it again. */
int pyvmm_fast_run(struct pyvmm_fast *state);

/* The checks the loop applies, on the exit now in `state->run`, without
 * entering the guest: 1 if handled in C, 0 if left for Python. For tests on
 * a fake kvm_run. */
int pyvmm_fast_handle_exit(struct pyvmm_fast *state);

#endif
