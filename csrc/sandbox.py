"""cdef for sandbox.c: loading filters, the SIGSYS recorder and the log listener."""

INCLUDES = """
#include <fcntl.h>
#include <sys/ioctl.h>
#include <linux/seccomp.h>
#include <stdlib.h>
#include <sys/mman.h>
#include "sandbox.h"
"""

TYPES = """
#define PYVMM_SANDBOX_EVENTS ...
#define PYVMM_SANDBOX_CONTINUE ...
#define PYVMM_SANDBOX_REFUSE ...

/* Values some rules compare arguments with. */
#define SECCOMP_IOCTL_NOTIF_RECV ...
#define SECCOMP_IOCTL_NOTIF_SEND ...
#define AT_EMPTY_PATH ...
#define PROT_EXEC ...

struct pyvmm_sandbox_event {
    int32_t tid;
    int32_t nr;
    uint64_t detail;
    int32_t refused;
};
"""

FUNCTIONS = """
int pyvmm_sandbox_install_trap(void);
uint64_t pyvmm_sandbox_event_count(void);
int pyvmm_sandbox_event(uint64_t index, struct pyvmm_sandbox_event *out);
int pyvmm_sandbox_load(const void *program, unsigned int count, int listen, const char *label);
int pyvmm_sandbox_prepare_listener(const void *program, unsigned int count);
int pyvmm_sandbox_listened(void);
int pyvmm_sandbox_listening(int32_t tid);
int pyvmm_sandbox_name_thread(const char *name);
"""
