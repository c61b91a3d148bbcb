#ifndef PYVMM_HELPERS_H
#define PYVMM_HELPERS_H

/* Each returns the ioctl's result, or -errno on failure, so Python reads the
 * error from the return value instead of a second call for errno. */
int pyvmm_ioctl(int fd, unsigned long request, void *arg);
int pyvmm_ioctl_value(int fd, unsigned long request, unsigned long arg);

/* Installs a do-nothing handler for signo, so that a signal sent to a vCPU
 * thread makes its KVM_RUN return -EINTR (other calls are restarted). */
int pyvmm_install_kick_handler(int signo);

/* Where KVM_CAP_SYNC_REGS leaves struct kvm_regs, kvm_sregs and
 * kvm_vcpu_events inside struct kvm_run. */
unsigned long pyvmm_sync_regs_offset(void);
unsigned long pyvmm_sync_sregs_offset(void);
unsigned long pyvmm_sync_events_offset(void);

/* Has every thread allocate from one malloc arena (glibc's M_ARENA_MAX;
 * nothing elsewhere). Returns 0 if the allocator refused. */
int pyvmm_one_malloc_arena(void);

#endif
