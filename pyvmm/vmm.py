"""Machine: builds a VM from a VmConfig and runs its vCPUs.

The data flows one way: config -> VM (memory, buses, devices, vCPUs) ->
vCPU run loops -> buses -> devices. This is the only module where the KVM
layer and the devices meet.
"""

import functools
import signal
import threading
from time import monotonic, monotonic_ns

from . import guests
from ._kvm import lib
from .arch.x86_64 import cpuid, lapic, layout, modes, msr
from .console import InputPump, open_sink
from .devices import Bus, DebugExit, Serial16550
from .devices.context import DeviceContext, InterruptLine
from .kvm import Kvm
from .loader import LoadOptions, load_kernel
from .hooks import Hooks
from .memory import GuestMemory
from .platform import PcPlatform
from .runloop import VcpuLoop
from .stats import ExitStats
from .stop import STATUS_CRASH, STATUS_OK, STATUS_TIMEOUT, StopSignal
from .trace import ExitTracer

COM1, COM1_IRQ = 0x3F8, 4
DEBUG_EXIT_PORT = 0xF4
# KVM needs three pages for the real-mode TSS and one for the EPT identity
# map, inside guest-physical space but outside RAM: just below the BIOS.
TSS_ADDR = 0xFFFBD000
IDENTITY_MAP_ADDR = 0xFFFBC000
FLUSH_INTERVAL = 0.05
# Dormancy probes start fast (a tiny guest halts within milliseconds) and
# back off; a run ends after two rounds in a row found every vCPU dormant.
FIRST_PROBE, LAST_PROBE, PROBE_BACKOFF = 0.001, 0.05, 1.25
DORMANT_ROUNDS_TO_STOP = 2
# The signal that interrupts a vCPU thread's KVM_RUN (handled in C, no-op).
KICK_SIGNAL = signal.SIGRTMIN + 2
_kick_installed = False


def _install_kick_handler():
    global _kick_installed
    if not _kick_installed:
        if lib.pyvmm_install_kick_handler(KICK_SIGNAL) < 0:
            raise OSError("cannot install the vCPU kick signal handler")
        _kick_installed = True


def read_kernel(config):
    """The kernel image bytes and the load options from the config."""
    options = LoadOptions(raw_mode=config.raw_mode, load_addr=config.load_addr,
                          entry=config.entry, cmdline=config.cmdline)
    path = config.kernel if config.kernel is not None else guests.path(guests.DEFAULT_GUEST)
    options.kernel_path = path
    options.modules = [(spec, read_file(spec.split(" ", 1)[0], "module")) for spec in config.modules]
    options.initrd = None if config.initrd is None else read_file(config.initrd, "initrd")
    return read_file(path, "kernel"), options


def read_file(path, what):
    """The bytes of a file the user named; InputFileError says which and why."""
    try:
        with open(path, "rb") as source:
            return source.read()
    except IsADirectoryError:
        raise InputFileError(f"cannot read {what} {path}: it is a directory") from None
    except OSError as error:
        raise InputFileError(f"cannot read {what} {path}: {error.strerror or error}") from None


class InputFileError(ValueError):
    """A kernel, module or initrd file that cannot be read."""


class Machine:
    """One VM: memory, buses with the standard devices, vCPUs and their threads.

    Use as a context manager; close() releases every fd, mapping and thread.
    """

    def __init__(self, config, image=None, options=None):
        config.validate()
        self.config = config
        self.stop = StopSignal()
        self.stats = ExitStats()
        self.port_bus = Bus.port_io()
        self.mmio_bus = Bus.mmio()
        self.kvm = self.vm = self.memory = self.sink = None
        self.vcpus = []
        self.loops = []
        self.started_ns = None
        self.hooks = Hooks()
        self.tracer = None
        self.fast = None
        self._threads = []
        self._contexts = []
        self._input = None
        self.gdb = None
        self.virtio = None
        try:
            if image is None:
                image, options = read_kernel(config)
            self._build(image, options)
        except BaseException:
            self.close()
            raise

    def _build(self, image, options):
        # Bad input (virtio files, memory, kernel) is refused before KVM is touched.
        options = options or LoadOptions()
        if self.config.has_virtio:
            from .devices.virtio.slots import VirtioSlots
            self.virtio = VirtioSlots.open(self.config)
            options.cmdline = self.virtio.boot_cmdline(image, options)
        self.memory = GuestMemory(layout.ram_ranges(self.config.memory))
        options.rsdp_addr = PcPlatform.write_firmware_tables(
            self.memory, self.config.cpus, self.virtio.acpi_devices() if self.virtio else ())
        self.boot = load_kernel(image, self.memory, options)
        self.kvm = Kvm()
        self.vm = self.kvm.create_vm()
        self.vm.set_tss_addr(TSS_ADDR)
        self.vm.set_identity_map_addr(IDENTITY_MAP_ADDR)
        self.vm.create_irqchip()
        self.vm.create_pit2(lib.KVM_PIT_SPEAKER_DUMMY)
        self.vm.add_memory(self.memory)

        try:
            self.sink = open_sink(self.config.serial)
        except OSError as error:
            raise InputFileError(f"cannot write serial output {self.config.serial[5:]}: "
                                 f"{error.strerror or error}") from None
        self.serial = Serial16550(output=self.sink.write,
                                  irq=functools.partial(self._set_irq, COM1_IRQ))
        self.debug_exit = DebugExit(self._debug_exit)
        self.port_bus.register(COM1, 8, self.serial, name="serial (COM1)")
        self.port_bus.register(DEBUG_EXIT_PORT, 4, self.debug_exit, name="debug-exit")
        self.platform = PcPlatform(self.config, self.port_bus, self.mmio_bus, self.stop,
                                   self._set_irq, self.sink.write, self.boot.format)
        if self.virtio:
            self.virtio.attach(self, console_output=self.sink, before_console_output=self._flush_uart)
        self._create_vcpus()
        modes.enter(self.vcpus[0], self.memory, self.boot.mode, self.boot.entry, self.boot.regs)
        if self.config.trace:
            self._open_trace(self.config.trace)
        if self.config.gdb is not None:
            from .gdb import GdbStub   # only a debugged run pays for the stub's imports
            self.gdb = GdbStub(self, self.config.gdb)     # listens from now on

    def _open_trace(self, path):
        try:
            self.tracer = ExitTracer(path, self.port_bus.name_at, self.mmio_bus.name_at)
        except OSError as error:
            raise InputFileError(f"cannot write trace {path}: {error.strerror or error}") from None
        self.hooks.add(self.tracer, when="after")

    def _create_vcpus(self):
        """vCPU 0 boots the kernel; the others wait in the in-kernel LAPIC
        for INIT/SIPI from it, as on real hardware."""
        cpus = self.config.cpus
        supported = self.kvm.supported_cpuid()
        msrs = msr.boot_msrs(self.kvm.msr_index_list())
        for index in range(cpus):
            vcpu = self.vm.create_vcpu(index)
            entries = cpuid.vcpu_cpuid(supported, index, cpus, self.config.masked_features)
            vcpu.set_cpuid(entries)
            vcpu.set_msrs(msrs)
            vcpu.set_lapic(lapic.set_lint_as_firmware_does(vcpu.get_lapic()))
            if cpuid.has_feature(entries, "xsave"):
                vcpu.set_xcrs({0: cpuid.boot_xcr0(entries)})
            self.vcpus.append(vcpu)

    def _set_irq(self, line, level):
        self.vm.irq_line(line, 1 if level else 0)

    def _debug_exit(self, status):
        self.stop.request(status, "debug-exit")

    # --- devices ---------------------------------------------------------------
    def add_port_device(self, base, length, device, name=None, irq=None):
        """Routes ports [base, base+length) to `device`; a device with an
        attach(context) method then gets its DeviceContext (pyvmm.devices.context),
        with an interrupt line on IRQ `irq` if given."""
        self.port_bus.register(base, length, device, name=name)
        self._attach(device, name, irq)

    def add_mmio_device(self, base, length, device, name=None, irq=None):
        """As add_port_device, for MMIO [base, base+length)."""
        self.mmio_bus.register(base, length, device, name=name)
        self._attach(device, name, irq)

    def _attach(self, device, name, irq):
        attach = getattr(device, "attach", None)
        if not callable(attach):
            return
        line = None if irq is None else InterruptLine(functools.partial(self._set_irq, irq), f"irq{irq}")
        context = DeviceContext(name or type(device).__name__, self.memory, line, self._device_failed)
        self._contexts.append(context)
        attach(context)

    def add_hook(self, callback, when="after", reasons=None, ports=None, mmio=None):
        """Calls `callback(event)` around the exits it asks for; see pyvmm.hooks."""
        return self.hooks.add(callback, when, reasons, ports, mmio)

    def exit_stats(self):
        """The exit counters so far: readable during a run and after it."""
        if not self._threads:
            return self.stats
        live = ExitStats()
        if self.fast is not None:
            live.merge(self.fast.counts())
        for loop in self.loops:
            live.merge(loop.stats)
        return live

    @property
    def serial_output(self):
        """Everything the guest wrote to the UART (serial="buffer" only)."""
        return bytes(self.sink.data)

    # --- running ---------------------------------------------------------------
    def run(self, timeout=None, stdin_fd=None):
        """Runs until the guest stops; returns a RunResult.

        `timeout` defaults to config.timeout; `stdin_fd` (e.g. 0) feeds the
        UART's receiver from a host file descriptor.
        """
        timeout = self.config.timeout if timeout is None else timeout
        self.started_ns = monotonic_ns()
        _install_kick_handler()
        if stdin_fd is not None:
            feed = self.virtio.console_input if self.virtio else None
            self._input = InputPump(stdin_fd, feed or self.serial.feed).start()
        self.loops = self._make_loops()
        if self.gdb is not None:
            self.gdb.start(self.loops, self.kick_vcpu)    # vCPUs wait for gdb
        self._threads = [threading.Thread(target=self._run_vcpu, args=(loop,),
                                          name=f"pyvmm-vcpu{loop.vcpu.index}")
                         for loop in self.loops]
        for thread in self._threads:
            thread.start()
        try:
            self._supervise(timeout)
        finally:
            self._stop_vcpus()
            if self.gdb is not None:
                self.gdb.finish(self.stop.result)
            if self.fast is not None:
                self._flush_fast_path(close=True)
                self.stats.merge(self.fast.counts())
                self.fast = None
            for loop in self.loops:
                self.stats.merge(loop.stats)
            if self._input is not None:
                self._input.stop()
                self._input = None
            self.sink.flush()
        return self.stop.result

    def _make_loops(self):
        if self.config.exit_path == "fast":
            from .fastpath import FastLoop, FastPath
            if FastLoop.supported(self):   # hooks and tracing need the Python loop
                self.fast = FastPath(self.port_bus, self.mmio_bus, self.vm, self._device_failed)
                return [FastLoop(vcpu, self.port_bus, self.mmio_bus, self.stop, ExitStats(),
                                 fast=self.fast)
                        for vcpu in self.vcpus]
        return [VcpuLoop(vcpu, self.port_bus, self.mmio_bus, self.stop, ExitStats(), hooks=self.hooks)
                for vcpu in self.vcpus]

    def _device_failed(self, message):
        self.stop.request(STATUS_CRASH, "internal-error", message)

    def _flush_fast_path(self, close=False):
        """Delivers the writes a guest left queued (one spinning without exits,
        or at the end: then the zones stay for the VM's teardown)."""
        try:
            if close:
                self.fast.close(vm_ending=True)
            else:
                self.fast.flush()
        except Exception as error:   # a device bug: end the run, never a traceback
            self._device_failed(f"pyvmm internal error: {type(error).__name__}: {error}")

    def _flush_uart(self):
        """The UART bytes the fast path still holds go to the sink before a
        virtio console's (any thread): both write the same terminal."""
        fast = self.fast
        if fast is not None:
            fast.flush()

    def _run_vcpu(self, loop):
        try:
            loop.run()
        except Exception as error:  # a pyvmm or device bug: end the run, never a traceback
            self.stop.request(STATUS_CRASH, "internal-error",
                              f"vCPU {loop.vcpu.index}: pyvmm internal error: "
                              f"{type(error).__name__}: {error}", vcpu=loop.vcpu.index)

    def _supervise(self, timeout):
        """Waits for the stop, flushing the console, enforcing the timeout and
        ending the run once every vCPU is dormant."""
        deadline = None if timeout is None else monotonic() + timeout
        probe_interval, next_probe, next_flush = FIRST_PROBE, monotonic() + FIRST_PROBE, 0.0
        probe_round, dormant_rounds = 0, 0
        while not self.stop.event.is_set():
            now = monotonic()
            if deadline is not None and now >= deadline:
                self.stop.request(STATUS_TIMEOUT, "timeout", f"timed out after {timeout:g} s")
                break
            if now >= next_flush:
                if self.fast is not None:
                    self._flush_fast_path()
                self.sink.flush()
                next_flush = now + FLUSH_INTERVAL
            if now >= next_probe:
                if probe_round and all(loop.answered_round == probe_round and loop.dormant
                                       for loop in self.loops):
                    dormant_rounds += 1
                    if dormant_rounds >= DORMANT_ROUNDS_TO_STOP:
                        self.stop.request(STATUS_OK, "halt")
                        break
                else:
                    dormant_rounds = 0
                probe_round += 1
                self._probe(probe_round)
                probe_interval = min(probe_interval * PROBE_BACKOFF, LAST_PROBE)
                next_probe = now + probe_interval
            wake = min(next_flush, next_probe, deadline or next_probe)
            self.stop.event.wait(max(0.0, wake - monotonic()))

    def _probe(self, round_number):
        for loop, thread in zip(self.loops, self._threads):
            loop.request_probe(round_number)
            self._kick(thread)

    def kick_vcpu(self, index):
        """Makes vCPU `index` leave KVM_RUN (its loop then calls its interrupt_handler)."""
        self.vcpus[index].run.immediate_exit = 1
        threads = self._threads
        if index < len(threads) and threads[index].is_alive():
            self._kick(threads[index])

    def _kick(self, thread):
        try:
            signal.pthread_kill(thread.ident, KICK_SIGNAL)
        except ProcessLookupError:
            pass

    def _stop_vcpus(self):
        """Makes every vCPU thread leave KVM_RUN and joins it."""
        self.stop.request(STATUS_CRASH, "stopped", "the VMM stopped the run")
        for vcpu, thread in zip(self.vcpus, self._threads):
            while thread.is_alive():
                vcpu.run.immediate_exit = 1
                self._kick(thread)
                thread.join(0.01)
        self._threads = []

    # --- lifetime -----------------------------------------------------------------
    def close(self):
        if self._threads:
            self._stop_vcpus()
        for context in self._contexts:
            context.close()
        self._contexts = []
        if self.virtio is not None:
            self.virtio.close()       # after the device workers stopped: files and locks
            self.virtio = None
        if self.fast is not None:
            self.fast.close()
            self.fast = None
        if self.gdb is not None:
            self.gdb.close()
            self.gdb = None
        if self._input is not None:
            self._input.stop()
            self._input = None
        if self.sink is not None:
            self.sink.close()
        if self.tracer is not None:
            self.tracer.close()
        if self.vm is not None:
            self.vm.close()
        if self.memory is not None:
            self.memory.close()
        if self.kvm is not None:
            self.kvm.close()
        self.vcpus = []
        self.vm = self.memory = self.kvm = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
