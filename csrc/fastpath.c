/*
 * The C fast path of the vCPU run loop; see fastpath.h for what it handles.
 *
 * Safety rules, all checked on every exit before anything is read or
 * written on the guest's behalf:
 *   - io.count must be 1 (string I/O goes to Python) and io.size 1, 2 or 4;
 *     io.data_offset + io.size must lie inside the run_size bytes mapped at
 *     `run` (computed without overflow); an MMIO length must be 1..8;
 *   - an access is handled only when it lies wholly inside a posted range
 *     (computed without overflow) or matches a cached register exactly;
 *   - the table's count is bounded by PYVMM_FAST_REGS, the log's indices by
 *     PYVMM_FAST_LOG, KVM's ring indices by its capacity, and an entry's
 *     length by its 8 data bytes.
 * Anything else is left untouched in kvm_run for Python.
 */

#include <errno.h>
#include <string.h>
#include <sys/ioctl.h>

#include "fastpath.h"

int pyvmm_fast_log_init(struct pyvmm_fast_log *log, void *ring, uint32_t ring_bytes)
{
    log->head = 0;
    log->count = 0;
    log->python_holds = 0;
    log->pending = 0;
    log->ring = ring;
    log->ring_max = ring != NULL && ring_bytes > sizeof(struct kvm_coalesced_mmio_ring)
        ? (ring_bytes - sizeof(struct kvm_coalesced_mmio_ring)) / sizeof(struct kvm_coalesced_mmio)
        : 0;
    if (log->ring_max == 0)
        log->ring = NULL;
    return -pthread_mutex_init(&log->lock, NULL);
}

/* Lock held. 0 when the log is full. */
static int log_push(struct pyvmm_fast_log *log, uint64_t addr, int pio, const uint8_t *data,
                    uint32_t len, int source)
{
    struct pyvmm_fast_entry *entry;

    if (len == 0 || len > sizeof(entry->data))
        return 1;                               /* nothing a device could be given: dropped */
    if (log->count >= PYVMM_FAST_LOG || log->head >= PYVMM_FAST_LOG)
        return 0;
    entry = &log->entries[(log->head + log->count) % PYVMM_FAST_LOG];
    entry->addr = addr;
    entry->pio = pio ? 1 : 0;
    entry->len = (uint8_t)len;
    entry->source = (uint8_t)source;
    memset(entry->data, 0, sizeof(entry->data));
    memcpy(entry->data, data, len);
    log->count++;
    log->pending = 1;
    return 1;
}

/* Lock held: moves KVM's ring into the log, oldest first. 0 when the ring
 * is empty afterwards, -1 when the log filled up first. */
static int ring_move(struct pyvmm_fast_log *log)
{
    struct kvm_coalesced_mmio_ring *ring = log->ring;
    uint32_t first, last;

    if (ring == NULL)
        return 0;
    first = ring->first;
    last = __atomic_load_n(&ring->last, __ATOMIC_ACQUIRE);
    if (first >= log->ring_max || last >= log->ring_max) {      /* never from KVM: drop, do not index */
        __atomic_store_n(&ring->first, last < log->ring_max ? last : 0, __ATOMIC_RELEASE);
        return 0;
    }
    while (first != last) {
        struct kvm_coalesced_mmio entry = ring->coalesced_mmio[first];
        uint32_t len = entry.len < sizeof(entry.data) ? entry.len : sizeof(entry.data);

        if (!log_push(log, entry.phys_addr, entry.pio, entry.data, len, PYVMM_FROM_RING))
            break;
        first = (first + 1) % log->ring_max;
    }
    __atomic_store_n(&ring->first, first, __ATOMIC_RELEASE);
    return first == last ? 0 : -1;
}

int pyvmm_fast_log_append(struct pyvmm_fast_log *log, uint64_t addr, int pio, const char *data,
                          uint32_t len, int source)
{
    int done;

    pthread_mutex_lock(&log->lock);
    done = ring_move(log) == 0 && log_push(log, addr, pio, (const uint8_t *)data, len, source);
    pthread_mutex_unlock(&log->lock);
    return done;
}

uint32_t pyvmm_fast_log_take(struct pyvmm_fast_log *log, struct pyvmm_fast_entry *out, uint32_t max)
{
    uint32_t n, i;

    pthread_mutex_lock(&log->lock);
    ring_move(log);
    n = log->count < max ? log->count : max;
    if (log->head >= PYVMM_FAST_LOG)            /* cannot happen; never index with it */
        n = log->count = log->head = 0;
    for (i = 0; i < n; i++)
        out[i] = log->entries[(log->head + i) % PYVMM_FAST_LOG];
    log->head = (log->head + n) % PYVMM_FAST_LOG;
    log->count -= n;
    if (n)
        log->python_holds = 1;
    log->pending = log->count != 0 || log->python_holds;
    pthread_mutex_unlock(&log->lock);
    return n;
}

void pyvmm_fast_log_release(struct pyvmm_fast_log *log)
{
    pthread_mutex_lock(&log->lock);
    log->python_holds = 0;
    log->pending = log->count != 0;
    pthread_mutex_unlock(&log->lock);
}

void pyvmm_fast_reg_publish(struct pyvmm_fast_reg *reg, int active, uint64_t value)
{
    __atomic_store_n(&reg->value, value, __ATOMIC_RELAXED);
    __atomic_store_n(&reg->active, active ? 1 : 0, __ATOMIC_RELEASE);
}

/* A guest access C may handle: 1 handled, 0 for Python. `data` is the
 * written bytes, or where a read's answer goes (size bytes). */
static int handle_access(struct pyvmm_fast *s, uint64_t addr, int pio, int write, uint8_t *data,
                         uint32_t size)
{
    struct pyvmm_fast_table *table = s->table;
    uint32_t n, i;

    if (table == NULL)
        return 0;
    n = table->nregs < PYVMM_FAST_REGS ? table->nregs : PYVMM_FAST_REGS;
    for (i = 0; i < n; i++) {
        struct pyvmm_fast_reg *reg = &table->regs[i];

        if (reg->pio != pio)
            continue;
        if (write && reg->kind == PYVMM_REG_POSTED) {
            int queued;

            if (addr < reg->addr || size > reg->len || addr - reg->addr > reg->len - size)
                continue;
            if (!__atomic_load_n(&reg->active, __ATOMIC_ACQUIRE) || s->log == NULL)
                return 0;
            pthread_mutex_lock(&s->log->lock);
            queued = log_push(s->log, addr, pio, data, size, PYVMM_FROM_EXIT);
            pthread_mutex_unlock(&s->log->lock);
            if (!queued)
                return 0;                       /* full: Python drains, then writes */
            __atomic_add_fetch(&reg->count, 1, __ATOMIC_RELAXED);
            s->posted++;
            return 1;
        }
        if (!write && reg->kind == PYVMM_REG_CACHED && addr == reg->addr && size == reg->len) {
            uint64_t value;

            if (!__atomic_load_n(&reg->active, __ATOMIC_ACQUIRE))
                return 0;
            value = __atomic_load_n(&reg->value, __ATOMIC_RELAXED);
            memcpy(data, &value, size);         /* x86: little-endian */
            __atomic_add_fetch(&reg->count, 1, __ATOMIC_RELAXED);
            return 1;
        }
    }
    return 0;
}

static int handle_io(struct pyvmm_fast *s, struct kvm_run *run)
{
    uint32_t size = run->io.size;
    uint64_t offset = run->io.data_offset;

    if (run->io.count != 1 || (size != 1 && size != 2 && size != 4))
        return 0;
    if (s->run_size < size || offset > s->run_size - size)
        return 0;
    return handle_access(s, run->io.port, 1, run->io.direction == KVM_EXIT_IO_OUT,
                         (uint8_t *)run + offset, size);
}

static int handle_mmio(struct pyvmm_fast *s, struct kvm_run *run)
{
    uint32_t len = run->mmio.len;

    if (len < 1 || len > sizeof(run->mmio.data))
        return 0;
    return handle_access(s, run->mmio.phys_addr, 0, run->mmio.is_write != 0, run->mmio.data, len);
}

/* Handles the exit if it can (and counts it): 1 handled, 0 for Python,
 * which counts the exits it handles itself. */
static int handle_exit(struct pyvmm_fast *s)
{
    struct kvm_run *run = s->run;
    uint32_t reason = run->exit_reason;
    int handled;

    if (reason == KVM_EXIT_IO)
        handled = handle_io(s, run);
    else if (reason == KVM_EXIT_MMIO)
        handled = handle_mmio(s, run);
    else
        return 0;
    if (handled) {
        s->exits[reason]++;
        s->fast++;
    }
    return handled;
}

/* Moves KVM's ring into the log: 0, or -1 when the log is full. */
static int collect_ring(struct pyvmm_fast *s)
{
    int full;

    if (s->log == NULL || s->log->ring == NULL)
        return 0;
    pthread_mutex_lock(&s->log->lock);
    full = ring_move(s->log);
    pthread_mutex_unlock(&s->log->lock);
    return full;
}

int pyvmm_fast_handle_exit(struct pyvmm_fast *state)
{
    return handle_exit(state);
}

/* The exit KVM_RUN returned before a PYVMM_FAST_DRAIN: 1 handled in C,
 * else what pyvmm_fast_run returns. */
static int resume(struct pyvmm_fast *s)
{
    int err;

    if (collect_ring(s) < 0)
        return PYVMM_FAST_DRAIN;
    s->resume = 0;
    err = s->run_errno;
    s->run_errno = 0;
    if (err)
        return -err;
    return handle_exit(s) ? 1 : PYVMM_FAST_EXIT;
}

int pyvmm_fast_run(struct pyvmm_fast *s)
{
    uint32_t handled = 0;

    if (s->resume) {
        int ret = resume(s);

        if (ret != 1)
            return ret;
        handled++;
    }
    for (;;) {
        int ret;

        if (s->stop != NULL && __atomic_load_n(s->stop, __ATOMIC_ACQUIRE))
            return PYVMM_FAST_STOP;
        if ((s->budget != 0 && handled >= s->budget) || (s->volume != 0 && s->posted >= s->volume))
            return PYVMM_FAST_BUDGET;
        ret = ioctl(s->vcpu_fd, KVM_RUN, 0);
        s->run_errno = ret < 0 ? errno : 0;
        /* writes the guest made before this exit come first */
        if (collect_ring(s) < 0) {
            s->resume = 1;
            return PYVMM_FAST_DRAIN;
        }
        if (ret < 0) {
            ret = -s->run_errno;
            s->run_errno = 0;
            return ret;
        }
        if (!handle_exit(s))
            return PYVMM_FAST_EXIT;
        handled++;
    }
}
