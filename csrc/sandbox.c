#define _GNU_SOURCE
#include <errno.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <poll.h>
#include <pthread.h>
#include <seccomp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <ucontext.h>
#include <unistd.h>

#include "sandbox.h"

/* --- events: recorded by the SIGSYS handler and the listener ------------- */

/* A ring: event n lives in slot n % PYVMM_SANDBOX_EVENTS, and event_seq of
 * that slot says which n it holds (n + 1 once complete, 0 while written). */
static struct pyvmm_sandbox_event events[PYVMM_SANDBOX_EVENTS];
static uint64_t event_seq[PYVMM_SANDBOX_EVENTS];
static uint64_t event_next;

/* Each thread, and each listened fd (one per thread), reports a call (with
 * its request) once: a thread that loops on a refused call cannot flood
 * the ring. */
#define SEEN_MAX 64

struct seen {
    unsigned int count;
    uint64_t keys[SEEN_MAX];
};

static int first_time(struct seen *seen, int nr, uint64_t detail)
{
    uint64_t key = ((uint64_t)(uint32_t)nr << 32) | (detail & 0xffffffffu);

    for (unsigned int i = 0; i < seen->count; i++)
        if (seen->keys[i] == key)
            return 0;
    if (seen->count < SEEN_MAX)
        seen->keys[seen->count++] = key;
    return 1;
}

static void record(int32_t tid, int32_t nr, uint64_t detail, int refused)
{
    uint64_t index = __atomic_fetch_add(&event_next, 1, __ATOMIC_ACQ_REL);
    uint64_t slot = index % PYVMM_SANDBOX_EVENTS;

    __atomic_store_n(&event_seq[slot], 0, __ATOMIC_RELEASE);
    events[slot].tid = tid;
    events[slot].nr = nr;
    events[slot].detail = detail;
    events[slot].refused = refused;
    __atomic_store_n(&event_seq[slot], index + 1, __ATOMIC_RELEASE);
}

static uint64_t request_of(int nr, uint64_t second_argument)
{
    return (nr == SYS_ioctl || nr == SYS_fcntl) ? second_argument : 0;
}

uint64_t pyvmm_sandbox_event_count(void)
{
    return __atomic_load_n(&event_next, __ATOMIC_ACQUIRE);
}

int pyvmm_sandbox_event(uint64_t index, struct pyvmm_sandbox_event *out)
{
    uint64_t slot = index % PYVMM_SANDBOX_EVENTS;
    uint64_t before = __atomic_load_n(&event_seq[slot], __ATOMIC_ACQUIRE);

    if (before > index + 1 || index + PYVMM_SANDBOX_EVENTS < __atomic_load_n(&event_next, __ATOMIC_ACQUIRE))
        return -1;                  /* overwritten by a later event */
    if (before != index + 1)
        return 0;                   /* still being written */
    *out = events[slot];
    __atomic_thread_fence(__ATOMIC_ACQUIRE);
    return __atomic_load_n(&event_seq[slot], __ATOMIC_RELAXED) == before ? 1 : -1;
}

/* --- SIGSYS: where the kernel has no user notification, and the listener --- */

/* The kernel skipped the call and raised SIGSYS in the calling thread. The
 * call then returns -EPERM (set in the saved registers), so the caller sees
 * an ordinary error instead of the thread or process dying unexplained. */
static __thread struct seen thread_seen;   /* reset when the thread loads a filter */

static void on_sigsys(int signo, siginfo_t *info, void *context)
{
    greg_t *regs = ((ucontext_t *)context)->uc_mcontext.gregs;
    int nr = info->si_syscall;
    uint64_t detail = request_of(nr, (uint64_t)regs[REG_RSI]);

    (void)signo;
    if (first_time(&thread_seen, nr, detail))
        record((int32_t)syscall(SYS_gettid), nr, detail, 1);
    regs[REG_RAX] = -EPERM;
}

static void listener_after_fork(void);

int pyvmm_sandbox_install_trap(void)
{
    struct sigaction action;
    static int forks_watched;

    if (!forks_watched && pthread_atfork(NULL, NULL, listener_after_fork) == 0)
        forks_watched = 1;
    memset(&action, 0, sizeof(action));
    action.sa_sigaction = on_sigsys;
    action.sa_flags = SA_SIGINFO;
    sigemptyset(&action.sa_mask);
    return sigaction(SIGSYS, &action, NULL) < 0 ? -errno : 0;
}

/* --- the listener thread: calls outside a list, refused or let through ------ */

#define LISTEN_MAX 1024

static pthread_mutex_t listen_lock = PTHREAD_MUTEX_INITIALIZER;
static int listen_fds[LISTEN_MAX];
static int32_t listen_tids[LISTEN_MAX];     /* the thread whose filter each fd serves */
static char listen_labels[LISTEN_MAX][PYVMM_SANDBOX_LABEL];    /* "" or how to name it */
static int listen_refuse[LISTEN_MAX];       /* refuse each call (on), or let it through (log) */
static struct seen listen_seen[LISTEN_MAX];
static int listen_count;
static int listen_pending;          /* threads between prepare and load */
static int listen_wake = -1;
static int listen_running;

struct listener_filter {
    unsigned int count;
    struct sock_filter program[];
};

/* A child of fork() has no listener thread: forget the parent's. */
static void listener_after_fork(void)
{
    pthread_mutex_init(&listen_lock, NULL);
    for (int i = 0; i < listen_count; i++)
        close(listen_fds[i]);
    if (listen_wake >= 0)
        close(listen_wake);
    listen_count = listen_pending = listen_running = 0;
    listen_wake = -1;
}

static void wake_listener(void)
{
    if (listen_wake >= 0)
        eventfd_write(listen_wake, 1);
}

/* System call names, resolved once by the thread that starts the listener:
 * the listener itself never allocates (it answers threads that may hold
 * malloc's locks). */
#define NAMES 512
static char call_names[NAMES][24];

static void resolve_names(void)
{
    for (int nr = 0; nr < NAMES; nr++) {
        char *name;
        if (call_names[nr][0])
            continue;
        name = seccomp_syscall_resolve_num_arch(SCMP_ARCH_NATIVE, nr);
        snprintf(call_names[nr], sizeof(call_names[nr]), "%s", name ? name : "");
        free(name);
    }
}

/* One line on stderr at once, so that even a call that ends the process
 * (execve) is heard. Dropped when stderr cannot take it now: a listener
 * stuck on a full pipe would hold every notified call of every thread. */
static void say(const char *label, int nr, uint64_t detail)
{
    char line[256], request[48] = "", number[16];
    const char *name = nr >= 0 && nr < NAMES && call_names[nr][0] ? call_names[nr] : NULL;
    int length;
    struct pollfd err = { .fd = 2, .events = POLLOUT };

    if (poll(&err, 1, 0) != 1 || !(err.revents & POLLOUT))
        return;
    if (name == NULL) {
        snprintf(number, sizeof(number), "%d", nr);
        name = number;
    }
    if (nr == SYS_ioctl || nr == SYS_fcntl)
        snprintf(request, sizeof(request), " (%s %#llx)", nr == SYS_ioctl ? "request" : "command",
                 (unsigned long long)(detail & 0xffffffffu));
    length = snprintf(line, sizeof(line), "pyvmm: seccomp: thread %s made system call %s%s, "
                      "which --seccomp on refuses\n", label, name, request);
    if (length > 0)
        write(2, line, (size_t)length < sizeof(line) ? (size_t)length : sizeof(line) - 1);
}

/* A call outside its thread's list: recorded, then refused with EPERM (on)
 * or let through (log). */
static void answer(int fd, struct seen *seen, const char *label, int refuse)
{
    struct seccomp_notif request;
    struct seccomp_notif_resp response;
    uint64_t detail;

    memset(&request, 0, sizeof(request));
    if (ioctl(fd, SECCOMP_IOCTL_NOTIF_RECV, &request) < 0)
        return;                     /* the caller went away (a signal, its end) */
    detail = request_of(request.data.nr, request.data.args[1]);
    if (first_time(seen, request.data.nr, detail)) {
        record((int32_t)request.pid, request.data.nr, detail, refuse);
        if (label[0] && !refuse)
            say(label, request.data.nr, detail);
    }
    memset(&response, 0, sizeof(response));
    response.id = request.id;
    if (refuse)
        response.error = -EPERM;
    else
        response.flags = SECCOMP_USER_NOTIF_FLAG_CONTINUE;
    ioctl(fd, SECCOMP_IOCTL_NOTIF_SEND, &response);
}

static void forget(int fd)
{
    pthread_mutex_lock(&listen_lock);
    for (int i = 0; i < listen_count; i++) {
        if (listen_fds[i] == fd) {
            listen_count--;
            listen_fds[i] = listen_fds[listen_count];
            listen_tids[i] = listen_tids[listen_count];
            memcpy(listen_labels[i], listen_labels[listen_count], PYVMM_SANDBOX_LABEL);
            listen_refuse[i] = listen_refuse[listen_count];
            listen_seen[i] = listen_seen[listen_count];
            break;
        }
    }
    pthread_mutex_unlock(&listen_lock);
    close(fd);
}

static void *listen_loop(void *argument)
{
    struct listener_filter *filter = argument;
    static struct pollfd polls[LISTEN_MAX + 1];  /* one listener thread at a time uses it */
    int count;

    prctl(PR_SET_NAME, "pyvmm-seccomp", 0, 0, 0);
    pyvmm_sandbox_load(filter->program, filter->count, 0, NULL);
    free(filter);
    for (;;) {
        pthread_mutex_lock(&listen_lock);
        count = listen_count;
        if (count == 0 && listen_pending == 0) {    /* every filter it served is gone */
            close(listen_wake);
            listen_wake = -1;
            listen_running = 0;
            pthread_mutex_unlock(&listen_lock);
            return NULL;
        }
        polls[0].fd = listen_wake;
        polls[0].events = POLLIN;
        for (int i = 0; i < count; i++) {
            polls[i + 1].fd = listen_fds[i];
            polls[i + 1].events = POLLIN;
        }
        pthread_mutex_unlock(&listen_lock);
        if (poll(polls, (nfds_t)count + 1, -1) < 0)
            continue;
        if (polls[0].revents & POLLIN) {
            eventfd_t ignored;
            eventfd_read(polls[0].fd, &ignored);
        }
        for (int i = 1; i <= count; i++)
            if (polls[i].revents & POLLIN)
                answer(polls[i].fd, &listen_seen[i - 1], listen_labels[i - 1], listen_refuse[i - 1]);
        for (int i = 1; i <= count; i++)    /* after: forget() moves entries */
            if (!(polls[i].revents & POLLIN) && (polls[i].revents & (POLLHUP | POLLERR | POLLNVAL)))
                forget(polls[i].fd);        /* no thread uses that filter any more */
    }
}

static int start_listener(const void *program, unsigned int count)
{
    struct listener_filter *filter;
    pthread_attr_t attributes;
    pthread_t thread;
    sigset_t all, saved;
    int error;

    if (count == 0 || count > BPF_MAXINSNS)
        return -EINVAL;
    resolve_names();
    filter = malloc(sizeof(*filter) + (size_t)count * sizeof(struct sock_filter));
    if (filter == NULL)
        return -ENOMEM;
    filter->count = count;
    memcpy(filter->program, program, (size_t)count * sizeof(struct sock_filter));
    listen_wake = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (listen_wake < 0) {
        error = -errno;
        free(filter);
        return error;
    }
    /* No signal of the process's (kicks, Ctrl-C) is handled there. */
    sigfillset(&all);
    sigdelset(&all, SIGSYS);
    pthread_attr_init(&attributes);
    pthread_attr_setdetachstate(&attributes, PTHREAD_CREATE_DETACHED);
    pthread_sigmask(SIG_SETMASK, &all, &saved);
    error = -pthread_create(&thread, &attributes, listen_loop, filter);
    pthread_sigmask(SIG_SETMASK, &saved, NULL);
    pthread_attr_destroy(&attributes);
    if (error) {
        close(listen_wake);
        listen_wake = -1;
        free(filter);
        return error;
    }
    listen_running = 1;
    return 0;
}

int pyvmm_sandbox_prepare_listener(const void *program, unsigned int count)
{
    int error = 0;

    pthread_mutex_lock(&listen_lock);
    if (listen_count + listen_pending >= LISTEN_MAX)
        error = -ENOSPC;
    else if (!listen_running)
        error = start_listener(program, count);
    if (error == 0)
        listen_pending++;
    pthread_mutex_unlock(&listen_lock);
    return error;
}

int pyvmm_sandbox_listened(void)
{
    int count;

    pthread_mutex_lock(&listen_lock);
    count = listen_count + listen_pending;
    pthread_mutex_unlock(&listen_lock);
    return count;
}

int pyvmm_sandbox_listening(int32_t tid)
{
    int found = 0;

    pthread_mutex_lock(&listen_lock);
    if (tid == 0)
        found = listen_running;
    for (int i = 0; i < listen_count && !found; i++)
        found = listen_tids[i] == tid;
    pthread_mutex_unlock(&listen_lock);
    return found;
}

/* --- loading a filter ------------------------------------------------------- */

int pyvmm_sandbox_load(const void *program, unsigned int count, int listen, const char *label)
{
    struct sock_fprog prog;
    long ret = -EINVAL;
    int32_t tid = (int32_t)syscall(SYS_gettid);
    sigset_t all, saved;

    thread_seen.count = 0;          /* touched here: the SIGSYS handler never allocates it */
    /* No signal handler may run while this thread holds listen_lock: its
     * return (rt_sigreturn) could be a call the listener must answer. */
    sigfillset(&all);
    if (listen)
        pthread_sigmask(SIG_BLOCK, &all, &saved);
    if (count > 0 && count <= BPF_MAXINSNS) {
        prog.len = (unsigned short)count;
        prog.filter = (struct sock_filter *)program;
        if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0)
            ret = -errno;
        else {
            ret = syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER,
                          listen ? SECCOMP_FILTER_FLAG_NEW_LISTENER : 0, &prog);
            if (ret < 0)
                ret = -errno;
        }
    }
    if (!listen)
        return ret < 0 ? (int)ret : 0;
    /* From here the thread is filtered: only a futex and a write (the
     * wake-up), which every role allows, until the listener has the fd.
     * Then restoring the signal mask may itself go to the listener. */
    pthread_mutex_lock(&listen_lock);
    listen_pending--;
    if (ret >= 0) {
        listen_seen[listen_count].count = 0;
        listen_tids[listen_count] = tid;
        snprintf(listen_labels[listen_count], PYVMM_SANDBOX_LABEL, "%s", label ? label : "");
        listen_refuse[listen_count] = listen == PYVMM_SANDBOX_REFUSE;
        listen_fds[listen_count++] = (int)ret;
    }
    wake_listener();
    pthread_mutex_unlock(&listen_lock);
    pthread_sigmask(SIG_SETMASK, &saved, NULL);
    return ret < 0 ? (int)ret : 0;
}

int pyvmm_sandbox_name_thread(const char *name)
{
    return prctl(PR_SET_NAME, name, 0, 0, 0) < 0 ? -errno : 0;
}
