"""cdef for sandbox.c: loading filters, the listener and the SIGSYS recorder; and
the request numbers the roles name (every KVM ioctl pyvmm issues, taken from
kvm_api.py's ioctl sections), so that pyvmm.sandbox needs no other extension."""

import re

import kvm_api

_IOCTL_SECTIONS = kvm_api.TYPES[kvm_api.TYPES.index("/* ioctls on /dev/kvm */"):
                                kvm_api.TYPES.index("/* capabilities */")]
KVM_IOCTLS = re.findall(r"#define (KVM_\w+) \.\.\.", _IOCTL_SECTIONS)

INCLUDES = """
#include <fcntl.h>
#include <sys/ioctl.h>
#include <linux/seccomp.h>
#include <linux/kvm.h>
#include <linux/if_tun.h>
#include <stdlib.h>
#include <sys/mman.h>
#include "sandbox.h"
"""

TYPES = """
#define PYVMM_SANDBOX_EVENTS ...
#define PYVMM_SANDBOX_CONTINUE ...
#define PYVMM_SANDBOX_REFUSE ...

/* The KVM ioctls pyvmm issues (from kvm_api.py), for the roles and reports. */
%(kvm)s

/* Values some rules compare arguments with. */
#define SECCOMP_IOCTL_NOTIF_RECV ...
#define SECCOMP_IOCTL_NOTIF_SEND ...
#define AT_EMPTY_PATH ...
#define PROT_EXEC ...
/* A virtio-net device setting its TAP's offloads as the driver negotiates them. */
#define TUNSETOFFLOAD ...

struct pyvmm_sandbox_event {
    int32_t tid;
    int32_t nr;
    uint64_t detail;
    int32_t refused;
};
""" % {"kvm": "\n".join(f"#define {name} ..." for name in KVM_IOCTLS)}

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
