#include <errno.h>
#include <stddef.h>
#include <linux/kvm.h>
#ifdef __GLIBC__
#include <malloc.h>
#endif
#include <signal.h>
#include <string.h>
#include <sys/ioctl.h>

#include "helpers.h"

int pyvmm_ioctl(int fd, unsigned long request, void *arg)
{
    int ret = ioctl(fd, request, arg);
    return ret < 0 ? -errno : ret;
}

int pyvmm_ioctl_value(int fd, unsigned long request, unsigned long arg)
{
    int ret = ioctl(fd, request, arg);
    return ret < 0 ? -errno : ret;
}

static void pyvmm_kick(int signo)
{
    (void)signo;
}

int pyvmm_install_kick_handler(int signo)
{
    struct sigaction action;

    memset(&action, 0, sizeof(action));
    action.sa_handler = pyvmm_kick;
    /* KVM_RUN returns EINTR whatever the flags; SA_RESTART lets any other
     * call the kick interrupts start again (one held by seccomp's log
     * listener, a device's blocking read) instead of failing with EINTR. */
    action.sa_flags = SA_RESTART;
    sigemptyset(&action.sa_mask);
    return sigaction(signo, &action, NULL) < 0 ? -errno : 0;
}

unsigned long pyvmm_sync_regs_offset(void)
{
    return offsetof(struct kvm_run, s.regs.regs);
}

unsigned long pyvmm_sync_sregs_offset(void)
{
    return offsetof(struct kvm_run, s.regs.sregs);
}

unsigned long pyvmm_sync_events_offset(void)
{
    return offsetof(struct kvm_run, s.regs.events);
}

int pyvmm_one_malloc_arena(void)
{
#ifdef __GLIBC__
    return mallopt(M_ARENA_MAX, 1);
#else
    return 1;
#endif
}
