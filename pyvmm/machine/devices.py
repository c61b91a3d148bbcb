"""Every device of a machine: the two buses, the PC platform's devices at the
places the address map gives them (pyvmm/arch/x86_64/layout.py), a user's
devices, and what each gets besides its registers (pyvmm.devices.context):
an interrupt line, guest memory and a worker thread.

QEMU's choices are followed where a kernel written for `qemu -kernel` can
tell the difference; each device is a plain object from pyvmm.devices.
"""

import contextlib
import functools

from ..arch.x86_64 import layout
from ..devices import (AcpiPm, Bus, BusError, Cmos, DebugConsole, DebugExit, FwCfg, I8042, PcTestDev,
                       PciConfigAbsent, PostCode, Serial16550)
from ..devices.context import DeviceContext, InterruptLine
from ..devices.state import DeviceStateError
from ..devices.i8042 import KEYBOARD_LINE, MOUSE_LINE
from ..run.stop import STATUS_CRASH, STATUS_OK

# QEMU fills fw_cfg's command line only for Linux and PVH kernels.
CMDLINE_IN_FW_CFG = ("bzImage", "pvh")
I8042_IRQS = {KEYBOARD_LINE: layout.I8042_KEYBOARD_IRQ, MOUSE_LINE: layout.I8042_MOUSE_IRQ}
# The platform's devices by the names their states have in a snapshot.
PLATFORM_STATES = (("serial", "serial"), ("debug-exit", "debug_exit"), ("i8042", "i8042"), ("cmos", "cmos"),
                   ("post", "post"), ("debugcon", "debugcon"), ("acpi-pm", "pm"), ("pci-config", "pci"),
                   ("fw_cfg", "fw_cfg"), ("pc-testdev", "testdev"))


def resampled_line(irqfd, worker, name):
    """An InterruptLine on a resampling irqfd (pyvmm.kvm.eventfd.IrqFd): raising
    it signals the irqfd; after each EOI, KVM lowers the GSI and signals the
    resample eventfd, and the worker raises it again while the device holds
    the line high. Lowering it needs nothing: the guest's EOI ends it."""
    line = InterruptLine(lambda level: level and irqfd.signal(), name)

    def resampled():
        irqfd.resample.take()
        if line.level:
            irqfd.signal()

    worker.watch(irqfd.resample.fileno(), resampled)
    return line


class DeviceManager:
    """The buses and devices of one VM.

    `vm` drives interrupt lines (KVM_IRQ_LINE); `stop` is the VM's
    StopSignal (reset, power-off, a guest's debug-exit and a failing device
    end the run through it); `console` receives what the UART and the debug
    console print. `sleep`, the machine's SleepControl (pyvmm.machine.sleep),
    hears ACPI S3 requests and RTC alarms; without one an S3 request ends
    the run. `sandbox` confines the devices' workers (pyvmm.sandbox).
    """

    def __init__(self, config, memory, vm, stop, console, boot_format=None, sandbox=None):
        self.memory, self.vm, self.stop, self.sandbox = memory, vm, stop, sandbox
        self.sleep = None
        self.port_bus = Bus.port_io()
        self.mmio_bus = Bus.mmio()
        self._contexts = {}                     # id(device) -> DeviceContext
        self._workerless = set()                # id(device) of those with uses_worker = False
        self.late_failures = []
        self.user_devices = {}                  # "name@port:0x560" -> device, in the order added
        self._platform = None                   # set once the platform's devices are in
        self._held = False                      # inside held(): no worker runs a callback
        # What a device worker runs before each callback: the machine's
        # delivery of the writes the fast path deferred (None: nothing is).
        self.catch_up = None
        self.serial = Serial16550(output=console)
        self.debug_exit = DebugExit(lambda status: stop.request(status, "debug-exit"))
        self.i8042 = I8042(on_reset=self._reset,
                           set_irq=lambda line, level: self.set_irq(I8042_IRQS[line], level))
        self.cmos = Cmos(config.memory, cpus=config.cpus, on_alarm=self._rtc_alarm)
        self.post = PostCode()
        self.debugcon = DebugConsole(console)
        self.pm = AcpiPm(on_poweroff=self._poweroff, on_reset=self._reset, on_sleep=self._sleep,
                         set_sci=functools.partial(self.set_irq, layout.SCI_IRQ))
        # The reset control register 0xcf9 sits inside the PCI config ports.
        self.pci = PciConfigAbsent(reset_control=self.pm.reset_control)
        cmdline = config.cmdline if boot_format in CMDLINE_IN_FW_CFG else None
        self.fw_cfg = FwCfg(config.memory, config.cpus, cmdline)
        self.testdev = PcTestDev(self.set_irq)

        ports = self.add_port_device
        ports(layout.COM1, self.serial, "serial (COM1)", irq=layout.COM1_IRQ)
        ports(layout.DEBUG_EXIT, self.debug_exit, "debug-exit")
        ports(layout.I8042_DATA, self.i8042.data, "i8042 data")
        ports(layout.I8042_COMMAND, self.i8042.command, "i8042 status/command")
        ports(layout.PC_TESTDEV_PORTS, self.testdev.ports, "pc-testdev ports")
        ports(layout.PC_TESTDEV_IRQ_LINES, self.testdev.irq_lines, "pc-testdev irq lines")
        ports(layout.CMOS, self.cmos, "cmos/rtc", irq=layout.RTC_IRQ)
        ports(layout.POST, self.post, "post")
        ports(layout.DEBUGCON, self.debugcon, "debugcon")
        ports(layout.ACPI_PM, self.pm, "acpi-pm")
        ports(layout.PCI_CONFIG, self.pci, "pci-config (no devices)")
        ports(layout.FW_CFG, self.fw_cfg, "fw_cfg")
        self.add_mmio_device(layout.PC_TESTDEV_MMIO, self.testdev.iomem, "pc-testdev iomem")
        self._platform = {name: getattr(self, attribute) for name, attribute in PLATFORM_STATES}

    # --- adding devices ------------------------------------------------------------
    def add_port_device(self, window, device, name=None, irq=None):
        """Routes the ports of `window` (base, length) to `device`, then hands it
        its context if it has attach(context) (see pyvmm.devices.context)."""
        self.port_bus.register(window[0], window[1], device, name=name)
        self._attach(self.port_bus, window[0], device, name, irq)

    def add_mmio_device(self, window, device, name=None, irq=None):
        """As add_port_device, for MMIO; refuses a range over guest RAM or the
        interrupt controllers, where KVM would never let an access reach it."""
        base, length = window
        if length <= 0:
            raise BusError(f"cannot register {name or type(device).__name__} at {base:#x}: "
                           f"length {length} is not positive")
        for start, size, what in self._mmio_taken():
            if base < start + size and start < base + length:
                raise BusError(f"cannot register {name or type(device).__name__} at "
                               f"[{base:#x}, {base + length:#x}): it overlaps {what} "
                               f"[{start:#x}, {start + size:#x}), which KVM handles itself")
        self.mmio_bus.register(base, length, device, name=name)
        self._attach(self.mmio_bus, base, device, name, irq)

    def _mmio_taken(self):
        for region in self.memory.regions:
            yield region.guest_addr, region.size, "guest RAM"
        yield layout.IOAPIC_BASE, 0x1000, "the IOAPIC"
        yield layout.LAPIC_BASE, 0x1000, "the local APIC"

    def _attach(self, bus, base, device, name, irq):
        name = name or type(device).__name__
        if self._platform is not None and all(device is not known for known in self.user_devices.values()):
            self.user_devices[f"{name}@{'port' if bus is self.port_bus else 'mmio'}:{base:#x}"] = device
        attach = getattr(device, "attach", None)
        if not callable(attach):
            if irq is not None:
                raise BusError(f"device {name} was given IRQ {irq} but has no attach(context) to drive it")
            return
        context = DeviceContext(name, self.memory, None, self.device_failed, bus.delivery_at(base).registers,
                                catch_up=self._catch_up, sandbox=self.sandbox)
        if irq is not None:
            context.irq = self._interrupt_line(irq, context)
        self._contexts[id(device)] = context
        if getattr(device, "uses_worker", True) is False:
            self._workerless.add(id(device))
        attach(context)

    def _interrupt_line(self, irq, context):
        """A device's line. An IOAPIC-only GSI (16 and up, where PCI-style
        level-triggered devices such as virtio's sit) is an irqfd KVM resamples
        at each EOI: no ioctl per interrupt, and the line is raised again while
        the device holds it high. An ISA IRQ follows the device's level exactly
        through KVM_IRQ_LINE (a guest may keep it masked and watch the PIC)."""
        if irq < layout.ISA_IRQS or not self.vm.kvm.check_extension("KVM_CAP_IRQFD_RESAMPLE"):
            return InterruptLine(functools.partial(self.set_irq, irq), f"irq{irq}")
        return resampled_line(self.vm.irqfd(irq, resample=True), context.worker, f"gsi{irq}")

    def _catch_up(self):
        catch_up = self.catch_up
        if catch_up is not None:
            catch_up()

    def worker_for(self, device):
        """The worker thread of `device` (its context's, made if it has none)."""
        context = self._contexts.get(id(device))
        if context is None:
            context = DeviceContext(type(device).__name__, self.memory, None, self.device_failed,
                                    catch_up=self._catch_up, sandbox=self.sandbox)
            self._contexts[id(device)] = context
        return context.worker

    def start_workers(self):
        """Starts every device's worker now, before the vCPUs run: a confined
        vCPU thread cannot create a thread (pyvmm.sandbox). A device that says
        it never uses one (uses_worker = False) gets none."""
        for key, context in list(self._contexts.items()):
            if key not in self._workerless:
                context.start()

    # --- state ---------------------------------------------------------------------------
    def stateful(self):
        """{name: device} of every device a snapshot holds: the platform's, then the user's."""
        return {**self._platform, **self.user_devices}

    @contextlib.contextmanager
    def held(self):
        """For the block, every device's worker is started, has run what was
        queued, and runs no callback: a snapshot, a restore or a reset sees,
        and leaves, devices and guest memory nothing else changes, even a
        network device with frames arriving. What comes due meanwhile runs
        afterwards. Nests."""
        if self._held:
            yield
            return
        self.start_workers()
        for context in list(self._contexts.values()):
            context.settle()
        with contextlib.ExitStack() as stack:
            for context in list(self._contexts.values()):
                stack.enter_context(context.held())
            self._held = True
            try:
                yield
            finally:
                self._held = False

    def written_areas(self):
        """(guest address, length) of the guest memory devices write through
        views they hold (the virtio transports' used rings)."""
        return [area for device in self.stateful().values()
                for area in (device.written_areas() if callable(getattr(device, "written_areas", None)) else ())]

    def save_state(self):
        """Every device's state by name, once their workers ran what was queued.
        DeviceStateError for a user's device that cannot save its state."""
        if not self._held:                      # held() settled them already (and a held one cannot)
            for context in list(self._contexts.values()):
                context.settle()
        states = {}
        for name, device in self.stateful().items():
            save = getattr(device, "save_state", None)
            if not callable(save) or not callable(getattr(device, "restore_state", None)):
                raise DeviceStateError(f"device {name} cannot be saved: it has no save_state() "
                                       "and restore_state() (see pyvmm/devices/state.py)")
            states[name] = save()
        return states

    def restore_state(self, states, changed_only=False):
        """Puts each saved state back into the device of that name; the names
        must be exactly this machine's (DeviceStateError otherwise).
        changed_only: a device whose state is that one already is left alone
        (saving a state costs a fraction of checking and restoring one)."""
        devices = self.stateful()
        if not isinstance(states, dict) or set(states) != set(devices):
            theirs = set(states) if isinstance(states, dict) else set()
            raise DeviceStateError("the saved devices do not match this machine's: "
                                   f"missing {sorted(set(devices) - theirs)}, unknown {sorted(theirs - set(devices))}")
        for name, device in devices.items():
            if changed_only and device.save_state() == states[name]:
                continue
            try:
                device.restore_state(states[name])
            except DeviceStateError:
                raise
            except (ValueError, TypeError, KeyError, AttributeError) as error:     # a user's device
                raise DeviceStateError(f"device {name}: {type(error).__name__}: {error}") from None

    # --- what devices reach ----------------------------------------------------------
    def set_irq(self, line, level):
        self.vm.irq_line(line, 1 if level else 0)

    def device_failed(self, message):
        """Ends the run as a device failure; one that comes after the run ended
        (a queued write delivered at the end) is kept in `late_failures`."""
        ended = self.stop.result
        if ended is not None and ended.reason != "device-failure":
            self.late_failures.append(message)
        self.stop.request(STATUS_CRASH, "device-failure", message)

    def _reset(self):
        self.stop.request(STATUS_OK, "reset")

    def _poweroff(self):
        self.stop.request(STATUS_OK, "poweroff")

    def _sleep(self, state):
        if self.sleep is not None:
            self.sleep.enter(state)
        else:                   # no machine to suspend: nothing could wake the guest
            self.stop.request(STATUS_OK, f"sleep-s{state}")

    def _rtc_alarm(self):
        if self.sleep is not None:
            self.sleep.rtc_alarm()

    def close(self):
        """Stops every device's worker thread."""
        contexts, self._contexts = list(self._contexts.values()), {}
        for context in contexts:
            context.close()

