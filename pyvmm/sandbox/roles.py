"""The roles of pyvmm's threads and the system calls each role may make.

How the lists were derived, by running pyvmm rather than guessing: first
`strace -f` of `pyvmm run` (hello; a gdb session; devices with a worker and
doorbells; stdin input) for the first lists; then the KVM, differential and
Linux tests under `python -m pyvmm.sandbox.survey` (every confined thread
reports every call it makes, once; see that module). Each call below is
either one the survey saw (the comments name the code that makes it) or
one a role's contract promises although no test made it (marked "by
contract": e.g. a device raising its interrupt line from a vCPU thread).
Calls the survey saw only from tests that make forbidden calls on purpose
are in no list. Run the survey again after changing what a thread does.

`ioctl` is allowed only for the request numbers listed, compared on their
low 32 bits (the kernel's `cmd` is an unsigned int); `mmap` and `mprotect`
only without PROT_EXEC, so that no confined thread maps new code; `tgkill`
only towards this process, with pyvmm's kick signal. No list has open,
socket, execve, clone or any other call that reaches beyond the fds and
memory a thread already has.
"""

import fcntl
import os
import termios

from .._sandbox import lib

WORD = 0xFFFFFFFF


class Arg:
    """A condition on a call: argument `index`, masked with `mask`, equals
    `value`. `value` may be a parameter name ("pid", "kick") that the filter
    builder resolves (this process, pyvmm's kick signal)."""

    __slots__ = ("index", "value", "mask")

    def __init__(self, index, value, mask=WORD):
        self.index, self.value, self.mask = index, value, mask

    def __repr__(self):
        return f"Arg({self.index}, {self.value!r}, mask={self.mask:#x})"


class Calls:
    """A set of allowed calls: `calls` without conditions, `ioctls` by
    request name, and `rules`: (call, (Arg, ...)) allowed when every Arg holds.
    Calls + Calls is their union."""

    def __init__(self, calls=(), ioctls=(), rules=()):
        self.calls = frozenset(calls)
        self.ioctls = frozenset(ioctls)
        self.rules = tuple(rules)

    def __add__(self, other):
        return Calls(self.calls | other.calls, self.ioctls | other.ioctls, self.rules + other.rules)

    def allows(self, call):
        """Whether `call` is allowed at all (with or without conditions)."""
        return (call in self.calls or any(name == call for name, _ in self.rules)
                or (call == "ioctl" and bool(self.ioctls)))


class Role:
    def __init__(self, name, summary, calls):
        self.name, self.summary, self.calls = name, summary, calls

    def __repr__(self):
        return f"Role({self.name!r})"


def in_directory(fd):
    """Rules for one thread that may stat and remove entries of the directory
    open as `fd` and nowhere else (a socket console's, at its end): for
    Sandbox.enter(extra=...)."""
    return (("newfstatat", ((0, fd, WORD),)),
            ("unlinkat", ((0, fd, WORD), (2, 0, WORD))))


def role(name):
    """A role by name: one of ROLES, or SURVEY."""
    return SURVEY if name == SURVEY.name else ROLES[name]


def ioctl_number(name):
    """The request number of an ioctl named in a role (the headers' own values)."""
    for source in (lib, termios):
        value = getattr(source, name, None)
        if isinstance(value, int):
            return value & WORD
    raise KeyError(f"unknown ioctl request {name}")


NO_EXEC = (Arg(2, 0, mask=lib.PROT_EXEC),)          # mmap/mprotect: prot without PROT_EXEC
KICK = (Arg(0, "pid"), Arg(2, "kick"))                # tgkill(this process, any thread, kick)
F_GETFL, F_SETFL = fcntl.F_GETFL, fcntl.F_SETFL
NEW_FILE = (Arg(2, os.O_CREAT | os.O_EXCL, mask=os.O_CREAT | os.O_EXCL),)   # openat: create, never open

# What the Python interpreter and glibc do in any thread: allocate (malloc's
# per-thread arena: mmap PROT_NONE, munmap, mprotect RW; obmalloc arenas;
# mremap and brk), wait and wake (futex, sched_yield, time.sleep), read the
# clock, block signals and return from a handler (the kick), end the thread
# (rt_sigprocmask, madvise on its stack, exit), write a line and close an
# fd. getrandom: os.urandom (an entropy device, by contract).
INTERPRETER = Calls(
    calls={"brk", "munmap", "mremap", "madvise", "futex", "sched_yield",
           "rt_sigreturn", "rt_sigprocmask", "restart_syscall",
           "gettid", "getpid", "clock_gettime", "clock_getres", "gettimeofday",
           "clock_nanosleep", "nanosleep", "getrandom",
           "exit", "exit_group", "write", "close"},
    rules=[("mmap", NO_EXEC), ("mprotect", NO_EXEC)],
)

# What a device's code may do wherever it runs (vCPU threads, its worker,
# the console thread's feed, the supervisor's flushes of deferred writes),
# by contract: I/O on file descriptors it already holds (eventfds, irqfds,
# pipes, open files, TAP devices; os.preadv and os.pwritev are preadv2 and
# pwritev2 to the kernel), asking its worker to watch an fd
# (DeviceWorker.watch: epoll_ctl), its interrupt line (KVM_IRQ_LINE:
# InterruptLine, the UART's IRQ), and a TAP's offloads (TUNSETOFFLOAD: a
# virtio-net device follows the features its driver accepts, on the vCPU
# thread that writes them).
DEVICE_CODE = INTERPRETER + Calls(
    calls={"read", "readv", "writev", "pread64", "pwrite64", "preadv", "pwritev", "preadv2",
           "pwritev2", "lseek", "epoll_ctl"},
    ioctls={"KVM_IRQ_LINE", "TUNSETOFFLOAD"},
)

# A vCPU thread's own ioctls: KVM_RUN; the dormancy probe (VcpuLoop.
# _answer_probe: MP state, then RFLAGS); the fast path's THR zone, which
# comes (coalesce_busy_uart) and goes (_thr_zone_follows, from the UART's
# state listener); the gdb stub's vCPU side (_classify: RIP, and stepping
# past the guest's own int3 through KVM_TRANSLATE and KVM_SET_REGS).
VCPU_IOCTLS = Calls(ioctls={
    "KVM_RUN", "KVM_GET_MP_STATE", "KVM_GET_REGS", "KVM_SET_REGS", "KVM_TRANSLATE",
    "KVM_REGISTER_COALESCED_MMIO", "KVM_UNREGISTER_COALESCED_MMIO",
})

# What the gdb stub does to a parked vCPU from its own thread: read and
# write registers (g, G, p, P packets), set guest debugging (breakpoints,
# steps), translate addresses.
DEBUG_IOCTLS = Calls(ioctls={
    "KVM_GET_REGS", "KVM_SET_REGS", "KVM_GET_SREGS", "KVM_SET_SREGS", "KVM_GET_FPU",
    "KVM_SET_FPU", "KVM_GET_MSRS", "KVM_SET_MSRS", "KVM_SET_GUEST_DEBUG", "KVM_TRANSLATE",
})

# A paused machine's state for a snapshot (pyvmm.kvm's plain state, in
# Firecracker's order): every vCPU's, and the in-kernel PIC, IOAPIC, PIT
# and clock.
SNAPSHOT_IOCTLS = Calls(ioctls={
    "KVM_CHECK_EXTENSION", "KVM_GET_MSR_INDEX_LIST", "KVM_GET_MSR_FEATURE_INDEX_LIST",
    "KVM_GET_REGS", "KVM_GET_SREGS", "KVM_GET_FPU", "KVM_GET_XSAVE", "KVM_GET_XSAVE2",
    "KVM_GET_XCRS", "KVM_GET_MSRS", "KVM_GET_MP_STATE", "KVM_GET_LAPIC", "KVM_GET_VCPU_EVENTS",
    "KVM_GET_DEBUGREGS", "KVM_GET_CPUID2", "KVM_GET_IRQCHIP", "KVM_GET_PIT2", "KVM_GET_CLOCK",
})

WAITING = Calls(calls={"poll", "ppoll", "select", "pselect6", "epoll_wait", "epoll_pwait"})

# Serving an already-bound, listening socket (the gdb stub's _accept and
# _Session: accept4, setsockopt TCP_NODELAY, settimeout's FIONBIO,
# getsockname, recv, sendall; an API server, by contract, likewise).
SERVING = Calls(
    calls={"read", "accept4", "recvfrom", "recvmsg", "sendto", "sendmsg", "setsockopt",
           "getsockopt", "getsockname", "getpeername", "shutdown"},
    ioctls={"FIONBIO"},
)

# pyvmm.sandbox.survey: only what a thread needs to hand its filter to the
# listener, so that every other call it makes is reported.
SURVEY = Role("survey", "every call reported (PYVMM_SECCOMP_SURVEY)", Calls(calls={"futex", "write"}))

ROLES = {role.name: role for role in (
    # tgkill: a guest's ACPI S3 request parks every vCPU from the exit that
    # asked (SleepControl.enter -> VcpuManager.suspend kicks them).
    Role("vcpu", "a vCPU thread (pyvmm-vcpuN): KVM_RUN and the exits' device code",
         DEVICE_CODE + VCPU_IOCTLS + Calls(rules=[("tgkill", KICK)])),
    # DeviceWorker._loop: epoll_wait on its selector, reads of its wake-up
    # eventfd and of the device's doorbell ioeventfds (pyvmm.run.doorbells),
    # device code, close at its end; by contract, what a block, network or
    # timer backend does with the fds its device opened: sync and allocate
    # files, stat them, send and receive on sockets, timerfds.
    Role("device", "a device's worker thread (pyvmm-dev-NAME): waits on fds, file and "
         "network I/O on fds the device opened",
         DEVICE_CODE + WAITING + Calls(calls={
             "fsync", "fdatasync", "fallocate", "ftruncate", "fstat", "sendto", "recvfrom",
             "sendmsg", "recvmsg", "timerfd_settime", "timerfd_gettime"},
             rules=[("newfstatat", (Arg(3, lib.AT_EMPTY_PATH, mask=lib.AT_EMPTY_PATH),))])),
    # The ACPI S3 controller's worker (pyvmm.machine.sleep): waits for a wake
    # event, then puts every parked vCPU back in its power-on state
    # (arch/x86_64/power_on.py: registers, x87/SSE, XCRs, MSRs, MP state,
    # local APIC, debug registers (read, then set to their reset values), no
    # pending event) and wakes the RTC and PM devices.
    Role("sleep", "the ACPI S3 controller's thread (pyvmm-dev-acpi-s3): resets parked vCPUs",
         DEVICE_CODE + WAITING + Calls(ioctls={
             "KVM_GET_REGS", "KVM_SET_REGS", "KVM_GET_SREGS", "KVM_SET_SREGS", "KVM_GET_FPU",
             "KVM_SET_FPU", "KVM_SET_XCRS", "KVM_SET_MSRS", "KVM_SET_MP_STATE", "KVM_SET_LAPIC",
             "KVM_GET_DEBUGREGS", "KVM_SET_DEBUGREGS", "KVM_SET_VCPU_EVENTS"})),
    # InputPump._pump (stdin, a pty's controller): select, read, the UART's
    # feed (its IRQ); SocketConsole._serve: accept one client at a time on
    # the socket bound before the run, setblocking (FIONBIO), recv.
    Role("console", "the console threads (pyvmm-input, pyvmm-console): the console's input",
         DEVICE_CODE + WAITING + SERVING),
    # GdbStub._serve: select/poll, the connection, parked vCPUs, kicks.
    Role("gdb", "the gdb stub's thread (pyvmm-gdb): one connection, parked vCPUs",
         INTERPRETER + WAITING + SERVING + DEBUG_IOCTLS + Calls(rules=[("tgkill", KICK)])),
    # ApiServer._serve (pyvmm.api): the socket bound before the run, and the
    # handlers: pause and resume (kicks), the power button (the SCI: device
    # code), counters, and a snapshot of the paused machine where the client
    # asks (its vCPUs' and in-kernel devices' state, guest RAM's pages read
    # through the pagemap fd it holds, then machine/snapshot.py's files: a
    # directory made, new files only (O_CREAT|O_EXCL), written, linked into
    # place, the temporary names unlinked). The thread that serves the
    # operator's socket may thus make new files and remove names anywhere
    # the VMM may: the price of snapshots wherever asked.
    Role("api", "the API thread (pyvmm-api): requests on the socket bound before the run",
         DEVICE_CODE + WAITING + SERVING + SNAPSHOT_IOCTLS + Calls(
             calls={"mkdir", "newfstatat", "link", "unlink", "ftruncate"},
             rules=[("tgkill", KICK), ("openat", NEW_FILE)])),
    # InlineRunner._watch (Machine.run_until_pause): sleeps, then asks for a
    # pause and kicks the thread running the vCPU.
    Role("watchdog", "an inline run's watchdog (pyvmm-watchdog): sleeps, then kicks",
         INTERPRETER + Calls(rules=[("tgkill", KICK)])),
    # VcpuManager.supervise and the end of Machine.run: waits, kicks
    # (pthread_kill), flushes the console output and the deferred writes
    # (device code), drops a socket console's client that left (shutdown),
    # waits for a pty's reader (FIONREAD), joins threads; then the command's
    # end: Machine.close (the VM's fds, mappings, eventfds still assigned:
    # KVM_IOEVENTFD, KVM_IRQFD; an output's file flags restored: fcntl; a
    # written virtio-blk image synced before it is closed: fdatasync),
    # raw_input_mode's restore (TCSETSW), isatty (TCGETS), boot()'s and the
    # interpreter's signal handlers (rt_sigaction).
    Role("supervisor", "the thread that called Machine.run with confine_caller "
         "(the pyvmm command's main thread): waits, kicks, flushes, tears down",
         DEVICE_CODE + WAITING + Calls(
             calls={"rt_sigaction", "shutdown", "fdatasync"},
             ioctls={"KVM_IOEVENTFD", "KVM_IRQFD", "KVM_UNREGISTER_COALESCED_MMIO",
                     "TCGETS", "TCSETSW", "FIONREAD"},
             rules=[("tgkill", KICK), ("fcntl", (Arg(1, F_GETFL),)), ("fcntl", (Arg(1, F_SETFL),))])),
    # csrc/sandbox.c's listen_loop: poll, the eventfd, the notifications.
    Role("listener", "the listener thread (pyvmm-seccomp, in C): answers notifications",
         INTERPRETER + Calls(calls={"poll", "read"},
                             ioctls={"SECCOMP_IOCTL_NOTIF_RECV", "SECCOMP_IOCTL_NOTIF_SEND"})),
)}
