"""The seccomp sandbox: every pyvmm thread confined to the calls of its role.

A guest is hostile, and pyvmm runs Python device models on its exits. If one
of them is ever turned against the host, the thread it runs on can still
only make the system calls that its role needs: a vCPU thread can enter
KVM_RUN and do I/O on file descriptors it already holds, but not open a
file or a socket, start a program, map executable memory or create a
thread. The roles and their lists are in pyvmm.sandbox.roles; the filters
are built with libseccomp (pyvmm.sandbox.filters, csrc/sandbox.c).

When a thread is confined. Each thread installs its own filter first thing
in its target function (`sandbox.enter(role)`), with no_new_privs set. A
filter is inherited by threads created afterwards and filters stack, so the
order matters:
- every thread a machine needs is created before the guest runs: Machine.run
  starts the devices' workers (which also take their doorbells), the
  console and gdb threads, then the vCPU threads; each confines itself as
  it starts;
- no confined thread may create a thread (clone and clone3 are in no list).
  A device's worker is therefore never started lazily from a vCPU thread;
  a device that starts a thread of its own on a vCPU thread is refused.
- the thread that calls Machine.run is the caller's, and stays unconfined
  unless it asks (`Machine.run(confine_caller=True)`, which the `pyvmm`
  command does: its main thread then confines itself as the supervisor once
  every other thread has started, and keeps that filter until it exits).
The listener thread (C, below) is started by the first thread that
confines itself, before its filter is loaded; it ends with the last one.

Modes (VmConfig.seccomp, `--seccomp`):
- on: a call outside the thread's list is not made: it fails with EPERM in
  the thread that made it, and the supervisor ends the run within 50 ms
  with `seccomp: thread pyvmm-vcpu0 made a forbidden system call execve`
  (status 125). The process is never killed without a word.
- log: the call is made, and reported at once on stderr, once per thread
  and call: `pyvmm: seccomp: thread pyvmm-vcpu0 (vcpu) made system call
  openat, which --seccomp on refuses`.
- off: nothing is confined.

How a refused or logged call is heard. The filter hands every call outside
the list to a listener thread in C (`pyvmm-seccomp`; seccomp user
notification, Linux 5.10 or later), which records the thread and the call,
then answers EPERM (on) or lets the call continue (log,
SECCOMP_USER_NOTIF_FLAG_CONTINUE). It takes no GIL, so a thread holding the
GIL cannot deadlock it, and no signal: a SIGSYS trap would be fatal where
glibc blocks every signal (around clone3 in pthread_create, around tgkill
in pthread_kill), since the kernel then kills the process. Without user
notification, on traps (SIGSYS; a C handler records the call and returns
EPERM) and log uses SCMP_ACT_LOG (the kernel's audit log, `dmesg`).

The Python API defaults to on, as the command does (PYVMM_SECCOMP=on|log|off
changes the default of VmConfig.seccomp). A program that embeds pyvmm runs
the same hostile guests through the same device models, so it gets the
same protection unless it opts out; and the cost to it is small: the
filters apply only to the threads pyvmm creates (whose code is pyvmm's and
that of the devices and hooks the program registered), never to the
program's own threads, and a device that needs more is told which call and
which thread.
"""

from .confinement import MODES, Sandbox, SandboxError, SeccompEvent
from .roles import ROLES

__all__ = ["MODES", "ROLES", "Sandbox", "SandboxError", "SeccompEvent"]
