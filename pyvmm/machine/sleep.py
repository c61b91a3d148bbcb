"""ACPI S3 (suspend to RAM) for one machine, as a PC with QEMU's firmware does it.

The guest writes SLP_TYP_S3 with SLP_EN to PM1a_CNT: the machine suspends.
Every vCPU stops at its next exit boundary (VcpuManager.suspend); guest RAM
and the devices keep their state. It stays so until a wake event:

* the RTC alarm interrupt (the CMOS alarm with AIE on), if RTC_EN is set
  in PM1_EN;
* the PM timer's next overflow, if TMR_EN is set and TMR_STS clear (QEMU);
* the power button (press_power_button()), always, as the ACPI spec has it;
* a resume request (wake(); QEMU's system_wakeup).

A guest that suspends with none of these possible (no alarm armed with
RTC_EN, no PM timer wake, and `external_wake` off, so nobody may call wake()
or press the button) would sleep until the timeout: the run ends instead,
with a warning, as it does in a VMM that has no wake source.

Waking is QEMU's qemu_system_wakeup (a machine reset that keeps RAM) and
then SeaBIOS's resume path, done on this controller's own thread:
1. wait until every vCPU is parked;
2. read the waking vector from the FACS (pyvmm.arch.x86_64.acpi); with
   none, firmware reboots, and pyvmm ends the run as it does on a reset;
3. reset every vCPU to its power-on state: vCPU 0 enters the waking vector
   (real mode, CS = vector >> 4, IP = vector & 0xF), the others wait for
   INIT/SIPI;
4. reset the RTC as QEMU's machine reset does, and the PM registers, with
   WAK_STS and the event's status bit (RTC_STS, TMR_STS, PWRBTN_STS) set
   in PM1_STS;
5. let the vCPUs run.
The other devices, and the in-kernel interrupt controllers and PIT, keep
their state (QEMU resets them too; an OS reprograms them on resume).
"""

import sys
import threading

from ..devices.acpi_pm import PWRBTN_STS, RTC_STS, TMR_STS
from ..devices.context import DeviceWorker
from ..run.stop import STATUS_CRASH, STATUS_OK

AWAKE, SUSPENDED, WAKING = "awake", "suspended", "waking"
EVENT_NAMES = {RTC_STS: "the RTC alarm", TMR_STS: "the PM timer", PWRBTN_STS: "the power button"}


class SleepControl:
    """S3 for one machine.

    `pm` and `cmos` are the machine's AcpiPm and Cmos; `stop` its
    StopSignal; `waking_vector()` reads the FACS's WakingVector (or None);
    `reset_vcpus(vector)` puts every vCPU in its power-on state, vCPU 0 at
    `vector`; `warn(text)` prints a warning. bind(vcpu_manager) at the start
    of each run gives it the vCPUs to suspend and wake, and starts its
    thread, confined with `sandbox` (pyvmm.sandbox): the vCPU or device
    thread that asks for a wake-up later could not create it.
    """

    def __init__(self, pm, cmos, stop, waking_vector, reset_vcpus, warn=None, sandbox=None):
        self.pm, self.cmos, self.stop = pm, cmos, stop
        self._waking_vector = waking_vector
        self._reset_vcpus = reset_vcpus
        self._warn = warn or (lambda text: print(f"warning: {text}", file=sys.stderr))
        self._lock = threading.Lock()
        self._state = AWAKE
        self._vcpus = None
        self._worker = None
        self._sandbox = sandbox
        self._timer = None             # the PM timer's wake, while suspended
        self.external_wake = False
        self.suspends = self.wakes = 0

    def bind(self, vcpu_manager):
        self._vcpus = vcpu_manager
        self._worker_thread()

    @property
    def state(self):
        return self._state

    # --- events, from any thread ------------------------------------------------------
    def enter(self, state):
        """The guest asked for sleep state `state`, S3 (the PM device's
        on_sleep, on the vCPU thread of the write)."""
        with self._lock:
            if self._state != AWAKE:
                return                  # another vCPU's request got here first
            timer_delay = self.pm.timer_wake_delay()
            armed = (self.external_wake or timer_delay is not None
                     or (self.pm.rtc_wake_enabled and self.cmos.alarm_armed))
            if not armed or self._vcpus is None:
                self._warn(f"the guest entered ACPI S{state} sleep with no wake source armed "
                           "(an RTC alarm with RTC_EN, the PM timer with TMR_EN, or a wake "
                           "request), so the run ends")
                self.stop.request(STATUS_OK, f"sleep-s{state}")
                return
            self._state = SUSPENDED
            self.suspends += 1
            self._vcpus.suspend()
            if timer_delay is not None:
                self._timer = self._worker_thread().call_later(timer_delay, self._event, TMR_STS)

    def rtc_alarm(self):
        """The RTC alarm interrupt fired (Cmos on_alarm, on its worker)."""
        if self.pm.rtc_wake_enabled:
            self._event(RTC_STS)

    def press_power_button(self):
        """The power button: wakes a suspended machine, else asks the OS to
        shut down (PWRBTN_STS and an SCI, if the guest enabled PWRBTN_EN)."""
        with self._lock:
            if self._state == AWAKE:
                self.pm.press_power_button()
                return
        self._event(PWRBTN_STS)

    def wake(self):
        """A resume request: True if the machine was suspended (and now wakes),
        False if it was not."""
        return self._event(PWRBTN_STS)          # QEMU's system_wakeup reports it as the power button

    def _event(self, status):
        with self._lock:
            if self._state != SUSPENDED:
                return False
            self._state = WAKING
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            self._worker_thread().call(self._wake, status)
        return True

    # --- the wake, on the controller's thread -------------------------------------------
    def _wake(self, status):
        woke = self._vcpus.wake(lambda: self._resume(status))
        with self._lock:
            self._state = AWAKE if woke else SUSPENDED
            self.wakes += woke

    def _resume(self, status):
        """With every vCPU parked: True when the vCPUs may run again."""
        vector = self._waking_vector()
        if vector is None:
            self._warn(f"{EVENT_NAMES[status]} woke the guest from ACPI S3, but the FACS holds no "
                       "waking vector; firmware reboots then, so the run ends as a reset")
            self.stop.request(STATUS_OK, "reset")
            return False
        self._reset_vcpus(vector)
        self.cmos.reset()
        self.pm.wake(status)
        return True

    def _worker_thread(self):
        if self._worker is None:
            self._worker = DeviceWorker("acpi-s3", self._failed, sandbox=self._sandbox, role="sleep")
        return self._worker

    def _failed(self, error):
        self.stop.request(STATUS_CRASH, "internal-error",
                          f"waking from ACPI S3: pyvmm internal error: {type(error).__name__}: {error}")

    def close(self):
        """Stops the controller's thread (a wake under way finishes first)."""
        with self._lock:
            worker, self._worker = self._worker, None
        if worker is not None:
            worker.close()
