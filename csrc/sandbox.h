#ifndef PYVMM_SANDBOX_H
#define PYVMM_SANDBOX_H

#include <stdint.h>

/* What pyvmm.sandbox needs below Python: loading a filter that libseccomp
 * built, and hearing about the system calls the filters stop (--seccomp on)
 * or let through after a note (--seccomp log).
 *
 * Events. A call outside a thread's list becomes one event: the thread id,
 * the call number and, for ioctl and fcntl, the request. Each thread
 * reports each (call, request) once. Events go to a process-wide ring that
 * Python reads; both writers (the SIGSYS handler and the listener thread)
 * use atomics only, so recording is safe inside a signal handler. */

#define PYVMM_SANDBOX_EVENTS 1024
#define PYVMM_SANDBOX_LABEL 64

/* How the listener answers a thread's notified calls. */
#define PYVMM_SANDBOX_CONTINUE 1     /* --seccomp log */
#define PYVMM_SANDBOX_REFUSE 2       /* --seccomp on */

struct pyvmm_sandbox_event {
    int32_t tid;
    int32_t nr;          /* the system call number (x86-64) */
    uint64_t detail;     /* ioctl/fcntl request, else 0 */
    int32_t refused;     /* 1: stopped (on), 0: let through (log) */
};

/* Installs the SIGSYS handler (process-wide, once): a trapped call records
 * an event and returns -EPERM to its caller, which goes on. Used where
 * the kernel has no user notification, and by the listener thread itself.
 * A call trapped while SIGSYS is blocked (glibc blocks every signal around
 * clone3 and tgkill) kills the process instead: the kernel's rule. */
int pyvmm_sandbox_install_trap(void);

/* Events recorded since the process started; event `index` into *out:
 * 1, or 0 while it is being written, or -1 once a later one overwrote it. */
uint64_t pyvmm_sandbox_event_count(void);
int pyvmm_sandbox_event(uint64_t index, struct pyvmm_sandbox_event *out);

/* Sets no_new_privs and loads a BPF program (an array of `count` struct
 * sock_filter) on the calling thread. With `listen` (PYVMM_SANDBOX_REFUSE
 * or _CONTINUE) the kernel also makes a user-notification fd, handed to the
 * listener thread at once (the caller called pyvmm_sandbox_prepare_listener
 * first), which answers that way; for a call it lets through it also
 * writes one line to stderr naming the thread `label` (none when NULL or
 * ""). Returns 0 or -errno. */
int pyvmm_sandbox_load(const void *program, unsigned int count, int listen, const char *label);

/* Makes sure the listener thread runs (started with `program` as its own
 * filter) and expects one more pyvmm_sandbox_load(..., listen). The
 * listener records each notified call as an event and answers it; it closes
 * each fd once no thread uses its filter any more, and ends when none is
 * left. Returns 0 or -errno. */
int pyvmm_sandbox_prepare_listener(const void *program, unsigned int count);

/* How many filters the listener serves or expects. */
int pyvmm_sandbox_listened(void);

/* Whether the listener still holds the fd of thread `tid`'s filter; with
 * tid 0, whether the listener thread is running. */
int pyvmm_sandbox_listening(int32_t tid);

/* Names the calling thread for the kernel (/proc/.../comm, 15 bytes kept). */
int pyvmm_sandbox_name_thread(const char *name);

#endif
