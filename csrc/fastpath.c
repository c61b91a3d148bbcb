/*
 * The C fast path of the vCPU run loop; see fastpath.h for what it handles.
 *
 * Safety rules, all checked on every exit before anything is read or
 * written on the guest's behalf:
 *   - io.count must be 1 (string I/O goes to Python) and io.size 1, 2 or 4;
 *   - io.data_offset + io.size must lie inside the run_size bytes mapped at
 *     `run` (computed without overflow);
 *   - the port must match a configured register exactly (UART) or the whole
 *     access must lie inside a configured sink range;
 *   - the TX buffer is appended to only below PYVMM_FAST_TXBUF, under the
 *     UART lock, and only while Python's published flag allows it;
 *   - ring indices are used only below the ring's capacity, and an entry's
 *     length only up to its 8 data bytes.
 * Anything else is left untouched in kvm_run for Python.
 */

#include <errno.h>
#include <string.h>
#include <sys/ioctl.h>

#include "fastpath.h"

#define UART_THR 0
#define UART_LSR 5

int pyvmm_fast_uart_init(struct pyvmm_fast_uart *uart)
{
    uart->thr_plain = 0;
    uart->lsr = -1;
    uart->len = 0;
    uart->full = 0;
    return -pthread_mutex_init(&uart->lock, NULL);
}

void pyvmm_fast_uart_publish(struct pyvmm_fast_uart *uart, int thr_plain, int lsr)
{
    pthread_mutex_lock(&uart->lock);
    uart->thr_plain = thr_plain ? 1 : 0;
    /* read without the lock by the LSR fast path: an atomic store */
    __atomic_store_n(&uart->lsr, (lsr >= 0 && lsr <= 0xff) ? lsr : -1, __ATOMIC_RELEASE);
    pthread_mutex_unlock(&uart->lock);
}

uint32_t pyvmm_fast_uart_take(struct pyvmm_fast_uart *uart, unsigned char *out, uint32_t cap)
{
    uint32_t n;

    pthread_mutex_lock(&uart->lock);
    n = uart->len < cap ? uart->len : cap;
    if (n > PYVMM_FAST_TXBUF)           /* cannot happen; never trust a length */
        n = 0;
    memcpy(out, uart->buf, n);
    if (n < uart->len && uart->len <= PYVMM_FAST_TXBUF)
        memmove(uart->buf, uart->buf + n, uart->len - n);
    uart->len = uart->len <= PYVMM_FAST_TXBUF ? uart->len - n : 0;
    pthread_mutex_unlock(&uart->lock);
    return n;
}

/* A 1-byte THR write: buffered when Python allows it and there is room. */
static int uart_thr(struct pyvmm_fast_uart *uart, unsigned char value)
{
    int done = 0;

    pthread_mutex_lock(&uart->lock);
    if (uart->thr_plain) {
        if (uart->len < PYVMM_FAST_TXBUF) {
            uart->buf[uart->len++] = value;
            done = 1;
        } else {
            uart->full++;
        }
    }
    pthread_mutex_unlock(&uart->lock);
    return done;
}

int pyvmm_fast_ring_init(struct pyvmm_fast_ring *ring, void *page, uint32_t page_size)
{
    ring->ring = page;
    ring->max = page_size > sizeof(struct kvm_coalesced_mmio_ring)
        ? (page_size - sizeof(struct kvm_coalesced_mmio_ring)) / sizeof(struct kvm_coalesced_mmio)
        : 0;
    ring->python_holds = 0;
    ring->thr_out = 0;
    return -pthread_mutex_init(&ring->lock, NULL);
}

/* Under the ring lock: takes entries from the oldest while C can handle them;
 * returns 1 if entries remain (for Python), 0 if the ring is empty. */
static int ring_take(struct pyvmm_fast_ring *r)
{
    struct kvm_coalesced_mmio_ring *ring = r->ring;
    uint32_t first = ring->first;
    uint32_t last = __atomic_load_n(&ring->last, __ATOMIC_ACQUIRE);

    if (first >= r->max || last >= r->max) {     /* never from KVM: drop, do not index */
        __atomic_store_n(&ring->first, last < r->max ? last : 0, __ATOMIC_RELEASE);
        return 0;
    }
    while (first != last) {
        struct kvm_coalesced_mmio *entry = &ring->coalesced_mmio[first];

        if (r->uart == NULL || !entry->pio || entry->len != 1 || entry->phys_addr != r->uart_base + UART_THR
                || !uart_thr(r->uart, entry->data[0]))
            break;
        r->thr_out++;
        first = (first + 1) % r->max;
    }
    __atomic_store_n(&ring->first, first, __ATOMIC_RELEASE);
    return first != last;
}

/* Drains what C can; 1 if Python must drain the rest (or is draining now). */
static int ring_drain(struct pyvmm_fast_ring *r)
{
    int left;

    pthread_mutex_lock(&r->lock);
    left = r->python_holds || ring_take(r);
    pthread_mutex_unlock(&r->lock);
    return left;
}

int pyvmm_fast_ring_pop(struct pyvmm_fast_ring *r, struct kvm_coalesced_mmio *out)
{
    int popped = 0;

    pthread_mutex_lock(&r->lock);
    if (ring_take(r)) {
        struct kvm_coalesced_mmio_ring *ring = r->ring;
        uint32_t first = ring->first;

        memcpy(out, &ring->coalesced_mmio[first], sizeof(*out));
        if (out->len > sizeof(out->data))
            out->len = sizeof(out->data);
        __atomic_store_n(&ring->first, (first + 1) % r->max, __ATOMIC_RELEASE);
        r->python_holds = 1;
        popped = 1;
    }
    pthread_mutex_unlock(&r->lock);
    return popped;
}

void pyvmm_fast_ring_release(struct pyvmm_fast_ring *r)
{
    pthread_mutex_lock(&r->lock);
    r->python_holds = 0;
    pthread_mutex_unlock(&r->lock);
}

static int handle_io(struct pyvmm_fast *s, struct kvm_run *run)
{
    uint32_t size = run->io.size;
    uint32_t port = run->io.port;
    int out = run->io.direction == KVM_EXIT_IO_OUT;
    uint64_t offset = run->io.data_offset;
    unsigned char *data;
    uint32_t i;

    if (run->io.count != 1 || (size != 1 && size != 2 && size != 4))
        return 0;
    if (s->run_size < size || offset > s->run_size - size)
        return 0;
    data = (unsigned char *)run + offset;

    if (s->uart != NULL && size == 1) {
        if (out && port == s->uart_base + UART_THR) {
            if (!uart_thr(s->uart, data[0]))
                return 0;
            s->thr_out++;
            return 1;
        }
        if (!out && port == (uint32_t)s->uart_base + UART_LSR) {
            int lsr = __atomic_load_n(&s->uart->lsr, __ATOMIC_ACQUIRE);
            if (lsr < 0 || lsr > 0xff)
                return 0;
            data[0] = (unsigned char)lsr;
            s->lsr_in++;
            return 1;
        }
    }
    for (i = 0; i < s->nsinks && i < PYVMM_FAST_MAX_SINKS; i++) {
        struct pyvmm_fast_sink *sink = &s->sinks[i];
        uint32_t length = sink->length;

        if (length > PYVMM_FAST_SINK_PORTS)
            continue;
        if (port < sink->base || port + size > (uint32_t)sink->base + length)
            continue;
        if (!out)
            memset(data, sink->fill, size);
        s->sink_counts[i][port - sink->base][out]++;
        return 1;
    }
    return 0;
}

/* Counts the exit in kvm_run and handles it if it can: 1 handled, 0 for Python. */
static int handle_exit(struct pyvmm_fast *s)
{
    struct kvm_run *run = s->run;
    uint32_t reason = run->exit_reason;

    if (reason < PYVMM_FAST_REASONS)
        s->exits[reason]++;
    else
        s->exits_other++;
    if (reason != KVM_EXIT_IO || !handle_io(s, run))
        return 0;
    s->fast++;
    return 1;
}

int pyvmm_fast_handle_exit(struct pyvmm_fast *state)
{
    return handle_exit(state);
}

int pyvmm_fast_pending(struct pyvmm_fast *s)
{
    int err = s->run_errno;

    s->run_errno = 0;
    if (err)
        return -err;
    return handle_exit(s) ? PYVMM_FAST_HANDLED : PYVMM_FAST_EXIT;
}

int pyvmm_fast_run(struct pyvmm_fast *s)
{
    uint32_t handled = 0;

    for (;;) {
        int ret;

        if (s->stop != NULL && __atomic_load_n(s->stop, __ATOMIC_ACQUIRE))
            return PYVMM_FAST_STOP;
        if (s->budget != 0 && handled >= s->budget)
            return PYVMM_FAST_BUDGET;
        ret = ioctl(s->vcpu_fd, KVM_RUN, 0);
        s->run_errno = ret < 0 ? errno : 0;
        /* writes the guest made before this exit come first */
        if (s->ring != NULL && ring_drain(s->ring))
            return PYVMM_FAST_RING;
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
