"""Building a role's filter with libseccomp, and what the kernel offers.

libseccomp builds the BPF program (the rules of pyvmm.sandbox.roles, with
argument conditions) and exports it; the program is then loaded by
csrc/sandbox.c, which sets no_new_privs and calls seccomp() with exactly
the flags pyvmm needs. (libseccomp 2.5's seccomp_load() adds
SECCOMP_FILTER_FLAG_NEW_LISTENER to every filter once any filter of the
process used SCMP_ACT_NOTIFY, and keeps that listener in library state; a
`--seccomp log` machine would thus change the filters of an `on` one.)
Programs are built once per (role, action, parameters) and cached.
"""

import functools
import os
import re

from .._sandbox import ffi, lib
from .roles import WORD, ioctl_number, role

ACTIONS = {"trap": lib.SCMP_ACT_TRAP, "notify": lib.SCMP_ACT_NOTIFY, "log": lib.SCMP_ACT_LOG}
# The kernel that reports a filter's end to its listener (poll HUP, 5.10) and
# lets a notified call continue (5.5).
NOTIFY_KERNEL = (5, 10)
INSTRUCTION_SIZE = 8            # struct sock_filter


class FilterError(Exception):
    """libseccomp refused a rule or the export: a bug in a role's definition."""


def syscall_number(name):
    number = lib.seccomp_syscall_resolve_name(name.encode())
    if number < 0:
        raise FilterError(f"libseccomp does not know the system call {name!r} on this architecture")
    return number


@functools.lru_cache(maxsize=None)
def syscall_name(number):
    """x86-64 name of a system call number (`syscall 999` when unknown)."""
    name = lib.seccomp_syscall_resolve_num_arch(lib.SCMP_ARCH_NATIVE, number)
    if name == ffi.NULL:
        return f"syscall {number}"
    try:
        return ffi.string(name).decode()
    finally:
        lib.free(name)


@functools.lru_cache(maxsize=64)
def program(role_name, default, pid=0, kick=0, extra=()):
    """The BPF program (bytes) of a role: its calls allowed, and `extra`
    ((call, ((arg index, value, mask), ...)), ...) with values known only at
    run time; anything else `default` (a key of ACTIONS). A call from another
    architecture's ABI (int 0x80, x32) is trapped in every mode."""
    role_calls = role(role_name).calls
    params = {"pid": pid, "kick": kick}
    context = lib.seccomp_init(ACTIONS[default])
    if context == ffi.NULL:
        raise FilterError("seccomp_init failed")
    try:
        _check(lib.seccomp_attr_set(context, lib.SCMP_FLTATR_ACT_BADARCH, lib.SCMP_ACT_TRAP),
               "set the bad-architecture action")
        # ioctl first: KVM_RUN is a vCPU thread's call per exit.
        _check(lib.seccomp_syscall_priority(context, syscall_number("ioctl"), 255), "favour ioctl")
        for call in sorted(role_calls.calls):
            _allow(context, call, ())
        for request in sorted(role_calls.ioctls):
            _allow(context, "ioctl", ((1, ioctl_number(request), WORD),))
        for call, conditions in role_calls.rules:
            if call not in role_calls.calls:
                _allow(context, call, tuple((arg.index, params.get(arg.value, arg.value), arg.mask)
                                            for arg in conditions))
        for call, conditions in extra:
            _allow(context, call, conditions)
        return _export(context)
    finally:
        lib.seccomp_release(context)


def _allow(context, call, conditions):
    compare = ffi.new("struct scmp_arg_cmp[]", max(1, len(conditions)))
    for slot, (index, value, mask) in zip(compare, conditions):
        slot.arg, slot.op, slot.datum_a, slot.datum_b = index, lib.SCMP_CMP_MASKED_EQ, mask, value & mask
    _check(lib.seccomp_rule_add_array(context, lib.SCMP_ACT_ALLOW, syscall_number(call),
                                      len(conditions), compare), f"allow {call}")


def _export(context):
    fd = os.memfd_create("pyvmm-seccomp", os.MFD_CLOEXEC)
    try:
        _check(lib.seccomp_export_bpf(context, fd), "export the filter")
        size = os.lseek(fd, 0, os.SEEK_END)
        code = os.pread(fd, size, 0)
    finally:
        os.close(fd)
    if not code or len(code) % INSTRUCTION_SIZE:
        raise FilterError(f"libseccomp exported a {len(code)}-byte program")
    return code


def _check(result, what):
    if result < 0:
        raise FilterError(f"libseccomp could not {what}: {os.strerror(-result)}")


@functools.lru_cache(maxsize=None)
def kernel_actions():
    """The filter actions this kernel offers (trap, user_notif, log, ...);
    empty without seccomp filters."""
    try:
        with open("/proc/sys/kernel/seccomp/actions_avail") as available:
            return frozenset(available.read().split())
    except OSError:
        return frozenset()


def kernel_version():
    match = re.match(r"(\d+)\.(\d+)", os.uname().release)
    return (int(match.group(1)), int(match.group(2))) if match else (0, 0)


def user_notification():
    """Whether calls outside a list can go to pyvmm's listener thread, which
    refuses (on) or continues (log) each one after recording it."""
    return "user_notif" in kernel_actions() and kernel_version() >= NOTIFY_KERNEL
