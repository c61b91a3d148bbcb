"""Machine: one VM, built from a VmConfig, run until the guest stops.

The data flows one way: config -> builder (memory, kernel, KVM VM, vCPUs) ->
device manager (buses, devices) -> vCPU manager (threads running the run
loops of pyvmm.run) -> buses -> devices. The three parts live beside this
module; Machine wires them and is the public API the CLI and users share.
"""

from time import monotonic_ns

from ..arch.x86_64 import acpi, power_on
from ..console import InputPump, open_output
from ..devices import DeviceFailure
from ..run.fast import FastLoop, FastPath
from ..run.hooks import Hooks
from ..run.loop import VcpuLoop
from ..run.stats import ExitStats
from ..run.stop import STATUS_CRASH, RunResult, StopSignal
from ..run.trace import ExitTracer
from ..sandbox import Sandbox
from ..sandbox.roles import in_directory
from .builder import InputFileError, build, read_kernel
from .devices import DeviceManager
from .sleep import SleepControl
from .vcpus import KICK_SIGNAL, VcpuManager


class Machine:
    """One VM: memory, buses with the standard devices, vCPUs and their threads.

    Use as a context manager; close() releases every fd, mapping and thread.
    A machine runs once.
    """

    def __init__(self, config, image=None, options=None):
        config.validate()
        self.config = config
        self.sandbox = Sandbox(config.seccomp, KICK_SIGNAL)   # pyvmm.sandbox: each thread's filter
        self.stop = StopSignal()
        self.stats = ExitStats()
        self.hooks = Hooks()
        self.started_ns = None
        self.built = self.devices = self.vcpu_manager = self.fast = self.sleep = None
        self.output = self.tracer = self.gdb = self._input = None
        self.loops = []
        try:
            if image is None:
                image, options = read_kernel(config)
            self.built = build(config, image, options)
            try:
                self.output = open_output(config.serial)
            except OSError as error:
                raise InputFileError(f"{_serial_trouble(config.serial)}: {error.strerror or error}") from None
            self.devices = DeviceManager(config, self.memory, self.vm, self.stop, self.output.write,
                                         self.boot.format, self.sandbox)
            self.sleep = SleepControl(self.devices.pm, self.devices.cmos, self.stop,
                                      self._waking_vector, self._power_on_vcpus, sandbox=self.sandbox)
            self.devices.sleep = self.sleep
            if config.trace:
                self._open_trace(config.trace)
            if config.gdb is not None:
                from ..gdb import GdbStub   # only a debugged run pays for the stub's imports
                self.gdb = GdbStub(self, config.gdb)     # listens from now on
        except BaseException:
            self.close()
            raise

    # --- what the builder made ------------------------------------------------------
    @property
    def memory(self):
        return self.built.memory

    @property
    def vm(self):
        return self.built.vm

    @property
    def vcpus(self):
        return self.built.vcpus

    @property
    def boot(self):
        return self.built.boot

    @property
    def serial(self):
        return self.devices.serial

    @property
    def port_bus(self):
        """The port-I/O bus (pyvmm.devices.Bus): its ranges, names and devices."""
        return self.devices.port_bus

    @property
    def mmio_bus(self):
        return self.devices.mmio_bus

    @property
    def serial_output(self):
        """Everything the guest wrote to the console (serial="buffer" only)."""
        return bytes(self.output.data)

    @property
    def late_device_failures(self):
        """Device failures after the guest had ended the run (e.g. a queued write at the end)."""
        return list(self.devices.late_failures)

    @property
    def console_dropped(self):
        """Bytes of console output dropped because the output did not take them."""
        return self.output.dropped

    @property
    def console_drop_reason(self):
        return self.output.drop_reason

    @property
    def console_where(self):
        """Where a user attaches to the console: the pty's path or the socket's
        (None for the other back-ends)."""
        return self.output.where

    @property
    def console_carries_input(self):
        """True when the console back-end (pty, socket) brings its own input:
        run() then reads no stdin_fd."""
        return self.output.carries_input

    def post_codes(self):
        """(history of (time ns, value), total writes) of the POST port."""
        return self.devices.post.history(), self.devices.post.total_writes

    def _open_trace(self, path):
        try:
            self.tracer = ExitTracer(path, self.devices.port_bus.name_at, self.devices.mmio_bus.name_at)
        except OSError as error:
            raise InputFileError(f"cannot write trace {path}: {error.strerror or error}") from None
        self.hooks.add(self.tracer, when="after")

    # --- devices and hooks ------------------------------------------------------------
    def add_port_device(self, base, length, device, name=None, irq=None):
        """Routes ports [base, base+length) to `device`; a device with an
        attach(context) method then gets its DeviceContext (pyvmm.devices.context),
        with an interrupt line on IRQ `irq` if given."""
        self.devices.add_port_device((base, length), device, name, irq)

    def add_mmio_device(self, base, length, device, name=None, irq=None):
        """As add_port_device, for MMIO [base, base+length) (not over guest RAM
        or the interrupt controllers)."""
        self.devices.add_mmio_device((base, length), device, name, irq)

    def add_hook(self, callback, when="after", reasons=None, ports=None, mmio=None):
        """Calls `callback(event)` around the exits it asks for; see pyvmm.run.hooks."""
        return self.hooks.add(callback, when, reasons, ports, mmio)

    def exit_stats(self):
        """The exit counters so far: readable during a run and after it."""
        if self.vcpu_manager is None or not self.vcpu_manager.running:
            return self.stats
        live = ExitStats()
        if self.fast is not None:
            live.merge(self.fast.counts())
        for loop in self.loops:
            live.merge(loop.stats)
        return live

    def port_name(self, port):
        """The name of the device on a port ("" if none), for reports."""
        return self.devices.port_bus.name_at(port)

    # --- running --------------------------------------------------------------------
    def run(self, timeout=None, stdin_fd=None, confine_caller=False):
        """Runs until the guest stops; returns a RunResult.

        `timeout` defaults to config.timeout; `stdin_fd` (e.g. 0) feeds the
        UART's receiver from a host file descriptor, unless the console
        back-end brings its own input (pty, socket). Every thread the run
        needs starts before the vCPUs and confines itself (pyvmm.sandbox);
        with `confine_caller` the calling thread then confines itself too, as
        the supervisor, for the rest of its life (the pyvmm command does).
        """
        if self.vcpu_manager is not None:
            raise RuntimeError("a Machine runs once")
        timeout = self.config.timeout if timeout is None else timeout
        self.started_ns = monotonic_ns()
        if self.output.carries_input:
            self.output.start_input(self.serial.feed, self.sandbox)
        elif stdin_fd is not None:
            self._input = InputPump(stdin_fd, self.serial.feed, self.sandbox).start()
        self.loops = self._make_loops()
        self.devices.start_workers()        # a confined vCPU thread cannot create one
        self.vcpu_manager = VcpuManager(self.loops, self.stop, self._flush, self.sandbox)
        self.sleep.bind(self.vcpu_manager)
        if self.gdb is not None:
            self.gdb.start(self.loops, self.vcpu_manager.kick)    # vCPUs wait for gdb
        self.vcpu_manager.start()
        try:
            if confine_caller:
                directory = getattr(self.output, "directory", None)    # a socket console's
                self.sandbox.enter("supervisor", extra=() if directory is None else in_directory(directory))
            self.vcpu_manager.supervise(timeout)
        finally:
            self.vcpu_manager.stop_all()
            self.sleep.close()
            if self.gdb is not None:
                self.gdb.finish(self.stop.result)
            if self.fast is not None:
                self._deliver(lambda: self.fast.close(vm_ending=True))
                self.stats.merge(self.fast.counts())
                self.fast = None
            for loop in self.loops:
                self.stats.merge(loop.stats)
            if self._input is not None:
                self._input.stop()
                self._input = None
            if self.output.carries_input:
                self.output.stop_input()
            self.output.finish()
            if self.sandbox.poll():           # a refused call is why the run ended
                self.stop.result = RunResult(STATUS_CRASH, "seccomp", self.sandbox.refusal)
        return self.stop.result

    def pause(self, timeout=5.0):
        """Stops every vCPU at an exit boundary until resume(); True once they all are."""
        if self.vcpu_manager is None:
            raise RuntimeError("the machine is not running")
        return self.vcpu_manager.pause(timeout)

    def resume(self):
        if self.vcpu_manager is not None:
            self.vcpu_manager.resume()

    # --- ACPI S3 and the power button --------------------------------------------------
    @property
    def suspended(self):
        """True while the guest sleeps in ACPI S3 (or is being woken)."""
        return self.sleep.state != "awake"

    @property
    def external_wake(self):
        """Whether something outside the guest (the API, a Python caller) may
        call wake() or press_power_button(): a guest that enters S3 with no
        wake source of its own armed then stays suspended (until a wake or
        the timeout) instead of ending the run. Off by default."""
        return self.sleep.external_wake

    @external_wake.setter
    def external_wake(self, value):
        self.sleep.external_wake = bool(value)

    def press_power_button(self):
        """The ACPI power button: while the guest runs, PWRBTN_STS and an SCI
        (if it enabled PWRBTN_EN); in S3, a wake event (WAK_STS, PWRBTN_STS)."""
        self.sleep.press_power_button()

    def wake(self):
        """A resume request (QEMU's system_wakeup): wakes a machine in S3, as
        the power button does. False when it was not suspended."""
        return self.sleep.wake()

    def _waking_vector(self):
        """The waking vector in the FACS, as the guest left it (None: none)."""
        return acpi.waking_vector(self.memory.read(self.built.facs, acpi.FACS_SIZE))

    def _power_on_vcpus(self, vector):
        """Every vCPU as after power-on; vCPU 0 enters `vector` (a WakingVector)."""
        for index, vcpu in enumerate(self.vcpus):
            power_on.power_on(vcpu, self.built.vcpu_boot[index], bsp=index == 0, entry=vector)

    def kick_vcpu(self, index):
        """Makes vCPU `index` leave KVM_RUN (its loop then runs its kick handlers)."""
        self.vcpu_manager.kick(index)

    def _make_loops(self):
        port_bus, mmio_bus = self.devices.port_bus, self.devices.mmio_bus
        if self.config.exit_path == "fast" and FastLoop.supported(self):   # hooks need the Python loop
            self.fast = FastPath(port_bus, mmio_bus, self.vm, self.devices.worker_for)
            return [FastLoop(vcpu, port_bus, mmio_bus, self.stop, ExitStats(), self.fast)
                    for vcpu in self.vcpus]
        return [VcpuLoop(vcpu, port_bus, mmio_bus, self.stop, ExitStats(), hooks=self.hooks)
                for vcpu in self.vcpus]

    def _flush(self):
        """The supervisor's periodic flush: deferred writes, then console
        output; and a call the sandbox refused ends the run."""
        if self.fast is not None:
            self._deliver(self.fast.flush)
        self.output.flush()
        if self.sandbox.poll():
            self.stop.request(STATUS_CRASH, "seccomp", self.sandbox.refusal)

    def _deliver(self, action):
        try:
            action()
        except DeviceFailure as failure:    # a device bug: end the run, never a traceback
            self.devices.device_failed(str(failure))

    # --- lifetime ---------------------------------------------------------------------
    def close(self):
        if self.vcpu_manager is not None and self.vcpu_manager.running:
            self.vcpu_manager.stop_all()
        if self.sleep is not None:
            self.sleep.close()
        if self.fast is not None:
            self.fast.close()
            self.fast = None
        if self.devices is not None:
            self.devices.close()
        if self.gdb is not None:
            self.gdb.close()
            self.gdb = None
        if self._input is not None:
            self._input.stop()
            self._input = None
        if self.output is not None:
            self.output.close()
        if self.tracer is not None:
            self.tracer.close()
        if self.built is not None:
            self.built.close()
        self.sandbox.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _serial_trouble(spec):
    if spec.startswith("socket="):
        return f"cannot listen on serial socket {spec[7:]}"
    if spec == "pty":
        return "cannot open a pseudo-terminal for the serial console"
    return f"cannot write serial output {spec[5:]}"
