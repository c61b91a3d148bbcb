"""cdef for helpers.c: the few C functions Python calls on the hot path."""

INCLUDES = """
#include "helpers.h"
"""

FUNCTIONS = """
int pyvmm_ioctl(int fd, unsigned long request, void *arg);
int pyvmm_ioctl_value(int fd, unsigned long request, unsigned long arg);
int pyvmm_install_kick_handler(int signo);
unsigned long pyvmm_sync_regs_offset(void);
unsigned long pyvmm_sync_sregs_offset(void);
unsigned long pyvmm_sync_events_offset(void);
int pyvmm_one_malloc_arena(void);
"""
