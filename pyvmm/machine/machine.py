"""Machine: one VM, built from a VmConfig, run until the guest stops.

The data flows one way: config -> builder (memory, kernel, KVM VM, vCPUs) ->
device manager (buses, devices) -> vCPU manager (threads running the run
loops of pyvmm.run) -> buses -> devices. The three parts live beside this
module; Machine wires them and is the public API the CLI and users share.
"""

import functools
import threading
from time import monotonic_ns

from ..arch.x86_64 import acpi, power_on
from ..console import InputPump, open_output
from ..devices import DeviceFailure
from ..devices.state import DeviceStateError
from ..kvm import one_malloc_arena
from ..run.fast import FastLoop, FastPath
from ..run.hooks import Hooks
from ..run.loop import VcpuLoop
from ..run.stats import ExitStats
from ..run.stop import STATUS_CRASH, STATUS_OK, RunResult, StopSignal
from ..run.trace import ExitTracer
from ..sandbox import Sandbox
from ..sandbox.roles import in_directory
from . import snapshot as snapshots
from .builder import InputFileError, build, build_restored, read_kernel
from .devices import DeviceManager
from .sleep import SleepControl
from .vcpus import KICK_SIGNAL, VcpuManager

# Machine.state
CREATED, RUNNING, PAUSED, SHUTDOWN = "created", "running", "paused", "shutdown"


class MachineStateError(Exception):
    """A request the machine cannot honour in its current state (snapshot a
    running VM, resume a running one...); the message says why."""


class Machine:
    """One VM: memory, buses with the standard devices, vCPUs and their threads.

    Use as a context manager; close() releases every fd, mapping and thread.
    A machine runs once.

    Lifecycle (pause, snapshot, restore): pause() parks every vCPU at an exit
    boundary; snapshot(DIR) writes a paused (or not yet started) machine to a
    directory (pyvmm/machine/snapshot.py); Machine.restore(DIR) builds the
    machine again, in any process, ready to run() on from where it stopped.
    """

    def __init__(self, config, image=None, options=None, snapshot=None):
        config.validate()
        one_malloc_arena()                      # before the VM's threads: see its docstring
        self.config = config
        self.sandbox = Sandbox(config.seccomp, KICK_SIGNAL)   # pyvmm.sandbox: each thread's filter
        self.stop = StopSignal()
        self.stats = ExitStats()
        self.hooks = Hooks()
        self.started_ns = None
        self.built = self.devices = self.vcpu_manager = self.fast = self.sleep = self.virtio = None
        self.output = self.tracer = self.gdb = self._input = None
        self.loops = []
        self._counted = False                   # self.stats holds the whole run's counts
        self.device_specs = []          # the --device specs of the user's devices (kept in snapshots)
        self._lifecycle = threading.RLock()
        self._inline = None             # the InlineRunner of run_until_pause
        try:
            if config.has_virtio:     # their files first: a bad one is a usage error, nothing built
                from .virtio import VirtioSlots
                self.virtio = VirtioSlots.open(config)
            if snapshot is not None:
                self.built = build_restored(config, snapshot)
            else:
                if image is None:
                    image, options = read_kernel(config)
                if self.virtio:
                    options = self.virtio.boot_options(image, options)    # Linux: the command line grows
                self.built = build(config, image, options,
                                   self.virtio.acpi_devices() if self.virtio else ())
            try:
                self.output = open_output(config.serial)
            except OSError as error:
                raise InputFileError(f"{_serial_trouble(config.serial)}: {error.strerror or error}") from None
            self.devices = DeviceManager(config, self.memory, self.vm, self.stop, self.output.write,
                                         self.boot.format, self.sandbox)
            self.sleep = SleepControl(self.devices.pm, self.devices.cmos, self.stop,
                                      self._waking_vector, self._power_on_vcpus, sandbox=self.sandbox)
            self.devices.sleep = self.sleep
            if self.virtio:
                self.virtio.attach(self, console_output=self.output)
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
        if self._inline is not None and self.fast is not None:
            live = ExitStats()
            live.merge(self.stats)
            live.merge(self.fast.counts())
            return live
        if self.vcpu_manager is None or self._counted:
            return self.stats
        live = ExitStats()
        fast = self.fast
        if fast is not None:
            live.merge(fast.counts())
        for loop in self.loops:
            live.merge(loop.stats)
        return live

    def device_counters(self):
        """{id: {counter: value}} of the virtio devices that count (network
        devices: packets, bytes and drops each way; disks: requests and
        bytes): readable during a run and after it."""
        return self.virtio.counters() if self.virtio else {}

    @property
    def taps(self):
        """[(device id, TAP name, made for this run)] of the network devices."""
        if not self.virtio:
            return []
        return [(device.id, device.tap.name, device.tap.created) for device in self.virtio.nets()]

    def port_name(self, port):
        """The name of the device on a port ("" if none), for reports."""
        return self.devices.port_bus.name_at(port)

    # --- running --------------------------------------------------------------------
    def run(self, timeout=None, stdin_fd=None, paused=False, confine_caller=False, caller_removes=()):
        """Runs until the guest stops; returns a RunResult.

        `timeout` defaults to config.timeout; `stdin_fd` (e.g. 0) feeds the
        UART's receiver from a host file descriptor, unless the console
        back-end brings its own input (pty, socket); `paused`: the vCPUs park
        before their first instruction, until resume(). Every thread the run
        needs starts before the vCPUs and confines itself (pyvmm.sandbox);
        with `confine_caller` the calling thread then confines itself too, as
        the supervisor, for the rest of its life (the pyvmm command does),
        still able to remove entries of the directories open as the fds
        `caller_removes` (sockets it removes at its end: the API's).
        """
        with self._lifecycle:
            if self.vcpu_manager is not None or self._inline is not None:
                raise RuntimeError("a Machine runs once")
            timeout = self.config.timeout if timeout is None else timeout
            self.started_ns = monotonic_ns()
            feed = (self.virtio.console_input if self.virtio else None) or self.serial.feed
            if self.output.carries_input:             # --console virtio takes the input
                self.output.start_input(feed, self.sandbox)
            elif stdin_fd is not None:
                self._input = InputPump(stdin_fd, feed, self.sandbox).start()
            self.loops = self._make_loops()
            self.devices.start_workers()        # a confined vCPU thread cannot create one
            self.vcpu_manager = VcpuManager(self.loops, self.stop, self._flush, self.sandbox)
            self.sleep.bind(self.vcpu_manager)
            if self.gdb is not None:
                self.gdb.start(self.loops, self.vcpu_manager.kick)    # vCPUs wait for gdb
            self.vcpu_manager.start(paused=paused)
        try:
            if confine_caller:
                directories = (getattr(self.output, "directory", None), *caller_removes)  # sockets' homes
                self.sandbox.enter("supervisor", extra=tuple(rule for directory in directories
                                                             if directory is not None
                                                             for rule in in_directory(directory)))
            self.vcpu_manager.supervise(timeout)
        finally:
            self.vcpu_manager.stop_all()
            self.sleep.close()
            if self.gdb is not None:
                self.gdb.finish(self.stop.result)
            final = ExitStats()                 # built aside: exit_stats() reads on meanwhile
            final.merge(self.stats)
            if self.fast is not None:
                self.devices.catch_up = None
                self._deliver(lambda: self.fast.close(vm_ending=True))
                final.merge(self.fast.counts())
            for loop in self.loops:
                final.merge(loop.stats)
            self.stats, self._counted = final, True
            self.fast = None
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

    def request_pause(self):
        """Asks every vCPU to park at its next exit boundary and returns at once:
        a device the guest writes to may call it (on the vCPU's thread)."""
        if self.vcpu_manager is not None:
            self.vcpu_manager.request_pause()
        elif self._inline is not None:
            self._inline.request_pause()

    def run_until_pause(self, timeout=None):
        """Runs a one-vCPU machine on the calling thread until a pause is asked
        for (request_pause(), e.g. by a device the guest writes to), the guest
        ends the run, or `timeout` s pass; returns a RunResult: reason "paused"
        (status None) or "timeout" (124) with the machine paused there, ready
        to run on, checkpoint() or reset(); or how the guest ended the run
        (reset() to a checkpoint then lets it run on). No vCPU thread, no
        supervisor: for snapshot fuzzing (pyvmm/machine/inline.py)."""
        with self._lifecycle:
            if self.vcpu_manager is not None:
                raise MachineStateError("the machine runs on its vCPU threads (run())")
            if len(self.vcpus) != 1:
                raise MachineStateError(f"run_until_pause runs one vCPU; this machine has {len(self.vcpus)}")
            if self.stop.requested:
                raise MachineStateError("the guest ended the run: reset() to a checkpoint first")
            if self._inline is None:
                from .inline import InlineRunner
                if self.started_ns is None:
                    self.started_ns = monotonic_ns()
                self.loops = self._make_loops()
                self._inline = InlineRunner(self, self.loops[0])
        try:
            return self._inline.run(timeout)
        finally:
            self.output.flush()
            for loop in self.loops:
                self.stats.merge(loop.stats)
                loop.stats = ExitStats()

    # --- checkpoints ---------------------------------------------------------------------
    def checkpoint(self):
        """The machine's state kept in memory for reset() (see
        pyvmm/machine/checkpoint.py); the machine must be paused or not started."""
        from .checkpoint import Checkpoint
        with self._lifecycle:
            self._check_still(self.state, "checkpoint")
            self._quiesce()
            try:
                with self.devices.held():
                    return Checkpoint(self)
            except DeviceStateError as error:
                raise MachineStateError(str(error)) from None

    def reset(self, checkpoint):
        """Puts the machine back to `checkpoint` (taken from this machine): the
        pages written since, the devices, the interrupt controllers, the vCPUs.
        The machine must be paused, or have ended a run_until_pause."""
        with self._lifecycle:
            if checkpoint.machine is not self:
                raise ValueError("a checkpoint resets only the machine it was taken from")
            state = self.state
            if state == RUNNING or (state == SHUTDOWN and self._inline is None):
                raise MachineStateError(f"cannot reset: the VM is {state} (pause it, or use run_until_pause)")
            self._quiesce()
            with self.devices.held():
                checkpoint.restore()

    def wait_paused(self, timeout=5.0):
        """True once every vCPU is parked after a pause request."""
        return self.vcpu_manager is not None and self.vcpu_manager.wait_paused(timeout)

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

    @property
    def state(self):
        """"created" (not run yet), "running", "paused" (every vCPU parked, or
        a pause asked for) or "shutdown" (the run ended)."""
        manager = self.vcpu_manager
        if self._inline is not None:
            if self._inline.running:
                return RUNNING
            return SHUTDOWN if self.stop.requested else PAUSED
        if manager is None:
            return CREATED
        if not manager.running or self.stop.requested:
            return SHUTDOWN
        return PAUSED if manager.paused else RUNNING

    def info(self):
        """What the machine is, as plain data: its configuration, state, vCPUs
        (parked or not) and devices (name, bus, base, length). Makes no vCPU
        ioctl, so it never waits for a running vCPU."""
        parked = self.vcpu_manager.parked_vcpus() if self.vcpu_manager is not None else set()
        devices = [{"name": entry.name, "bus": bus, "base": entry.base, "length": entry.end - entry.base}
                   for bus, entries in (("port", self.port_bus.entries()), ("mmio", self.mmio_bus.entries()))
                   for entry in entries]
        return {"config": self._plain_config(), "state": self.state,
                "vcpus": [{"index": vcpu.index, "parked": vcpu.index in parked} for vcpu in self.vcpus],
                "devices": devices, "memory_actual_size": self.memory.size}

    def shutdown(self):
        """Ends the run (status 0, reason "shutdown"), paused or not."""
        self.stop.request(STATUS_OK, "shutdown", "the VMM shut the VM down")
        if self.vcpu_manager is not None:
            self.vcpu_manager.resume()          # parked vCPUs wake and see the stop

    # --- snapshots ---------------------------------------------------------------------
    def snapshot(self, directory):
        """Writes the machine to `directory` (see pyvmm/machine/snapshot.py): it
        must be paused, or not started yet. Writes the guest made before the
        pause reach their devices first; console output already given to this
        process's output is this process's to write (the restored one prints
        only what the guest prints from here on). MachineStateError for a
        running or ended machine, SnapshotError if it cannot be written."""
        with self._lifecycle:
            self._check_still(self.state, "snapshot")
            self._quiesce()
            if self.stop.requested:
                raise MachineStateError("a device failed while the VM was paused: it cannot be snapshotted")
            with self.devices.held():       # nothing writes guest memory meanwhile (a network device)
                try:
                    state = snapshots.capture(self)
                except DeviceStateError as error:
                    raise MachineStateError(str(error)) from None
                snapshots.write(directory, self._plain_config(), state,
                                self.memory)

    @classmethod
    def restore(cls, snapshot, devices=(), make_device=None, **overrides):
        """A machine rebuilt from a snapshot (a directory, or a Snapshot from
        read_snapshot), ready to run() on from where it was paused.

        `overrides` set run-time config fields (serial, timeout, exit_path,
        trace, stats); `devices`: the user's devices, as (bus, base, length,
        device, name) with bus "port" or "mmio", at the places they had;
        `make_device(spec)` makes one from each --device spec the snapshot
        names, in the same form. SnapshotError for a damaged or foreign snapshot."""
        if not isinstance(snapshot, snapshots.Snapshot):
            snapshot = snapshots.read(snapshot)
        config, specs = snapshots.machine_config(snapshot, overrides)
        if specs and make_device is None:
            raise snapshots.SnapshotError(f"the snapshot has command-line devices ({', '.join(specs)}): "
                                          "give make_device")
        machine = cls(config, snapshot=snapshot)
        try:
            machine.device_specs = specs
            devices = list(devices) + [make_device(spec) for spec in specs]
            for bus, base, length, device, name in devices:
                register = machine.add_mmio_device if bus == "mmio" else machine.add_port_device
                register(base, length, device, name=name)
            with machine.devices.held():    # the devices' first passes wait for the VM's state
                snapshots.MachineState(machine, snapshot.state).apply(machine)
        except BaseException:
            machine.close()
            raise
        return machine

    def _plain_config(self):
        return snapshots.config_to_plain(self.config, self.device_specs,
                                         self.virtio.plain_config(self.config) if self.virtio else None)

    def _check_still(self, state, action):
        if state == PAUSED and self._inline is not None:
            return
        if state == RUNNING:
            raise MachineStateError(f"the VM is running: pause it before a {action}")
        if state == SHUTDOWN:
            raise MachineStateError(f"the guest ended the run: there is nothing to {action}")
        if state == PAUSED and not self.vcpu_manager.parked:
            raise MachineStateError(f"the VM is still pausing: try the {action} again")

    def _quiesce(self):
        """With the vCPUs parked: every write the guest made reaches its device
        (doorbells, the deferred-write queue), and console output goes out."""
        if self.fast is not None:
            if self.fast.doorbells is not None:
                self._deliver(self.fast.doorbells.collect)
            self._deliver(self.fast.flush)
        self.output.flush()

    def kick_vcpu(self, index):
        """Makes vCPU `index` leave KVM_RUN (its loop then runs its kick handlers)."""
        self.vcpu_manager.kick(index)

    def _make_loops(self):
        port_bus, mmio_bus = self.devices.port_bus, self.devices.mmio_bus
        if self.config.exit_path == "fast" and FastLoop.supported(self):   # hooks need the Python loop
            self.fast = FastPath(port_bus, mmio_bus, self.vm, self.devices.worker_for)
            self.devices.catch_up = functools.partial(self._deliver, self.fast.flush)
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
        if self._inline is not None:
            self._inline.close()
        if self.fast is not None:
            self.devices.catch_up = None
            self.fast.close()
            self.fast = None
        if self.devices is not None:
            self.devices.close()
        if self.virtio is not None:
            self.virtio.close()           # once the device workers stopped: files, locks, RAM views
            self.virtio = None
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
