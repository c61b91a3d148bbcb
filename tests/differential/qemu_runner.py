"""Running one guest under QEMU (TCG) and under pyvmm with matching options.

Shared by the differential tests. The two command lines are built from the
same arguments, so a test states a configuration once:

    qemu_command(kernel, cmdline="a b", modules=["m1 args", "m2"], cpus=2, memory_mib=128)
      -> qemu-system-x86_64 -accel tcg ... -m 128 -kernel K -append "a b"
             -initrd "m1 args,m2" -smp 2
    pyvmm_command(...same...)
      -> python -m pyvmm run K --memory 128M --timeout 60 --cmdline "a b"
             --module "m1 args" --module m2 --cpus 2

and run() drives either process: input now or after a prompt, output
until the process ends (or, for a guest QEMU leaves idling in `hlt`, until
enough output arrived), bounded by a timeout.
"""

import os
import select
import subprocess
import sys
import time

QEMU = "qemu-system-x86_64"
QEMU_ARGS = [QEMU, "-accel", "tcg", "-display", "none", "-serial", "stdio", "-monitor", "none",
             "-no-reboot", "-device", "isa-debug-exit,iobase=0xf4,iosize=0x04"]
PYVMM_TIMEOUT = 60          # --timeout: pyvmm ends the run itself (status 124)
DEFAULT_TIMEOUT = 90        # seconds before run() kills a process


class Run:
    """What one process did: `status` is its exit status, None when it was
    still running at the end (killed); `output` its stdout bytes."""

    def __init__(self, status, output, stderr=b""):
        self.status = status
        self.output = output
        self.stderr = stderr

    @property
    def text(self):
        return self.output.decode("utf-8", "replace")

    @property
    def lines(self):
        return self.text.splitlines()

    def __repr__(self):
        return f"Run(status={self.status!r}, output={self.output!r}, stderr={self.stderr[-400:]!r})"


def _initrd_argument(modules):
    # QEMU splits -initrd at commas; a literal comma is written twice.
    return ",".join(spec.replace(",", ",,") for spec in modules)


def qemu_command(kernel, cmdline=None, modules=(), cpus=None, memory_mib=128, extra=()):
    command = [*QEMU_ARGS, "-m", str(memory_mib), "-kernel", kernel]
    if cmdline is not None:
        command += ["-append", cmdline]
    if modules:
        command += ["-initrd", _initrd_argument(modules)]
    if cpus is not None:
        command += ["-smp", str(cpus)]
    return command + list(extra)


def pyvmm_command(kernel, cmdline=None, modules=(), cpus=None, memory_mib=128,
                  timeout=PYVMM_TIMEOUT, extra=()):
    command = [sys.executable, "-m", "pyvmm", "run", kernel, "--memory", f"{memory_mib}M",
               "--timeout", str(timeout)]
    if cmdline is not None:
        command += ["--cmdline", cmdline]
    for spec in modules:
        command += ["--module", spec]
    if cpus is not None:
        command += ["--cpus", str(cpus)]
    return command + list(extra)


# QEMU's microvm machine with its virtio-mmio transports in version 2 (QEMU 7.2
# shows version 1 without the -global), as /work/shared's notes give it.
MICROVM_ARGS = [QEMU, "-M", "microvm,x-option-roms=off,rtc=on,isa-serial=on", "-nodefaults",
                "-display", "none", "-serial", "stdio", "-monitor", "none", "-no-reboot",
                "-device", "isa-debug-exit,iobase=0xf4,iosize=0x04",
                "-global", "virtio-mmio.force-legacy=false"]


def microvm_command(kernel, devices=(), cmdline=None, memory_mib=128, accel="tcg"):
    """QEMU microvm with `devices`, each one of ("rng",), ("console",),
    ("disk", path, readonly, id): in order, they fill the slots from the top
    down, as pyvmm_virtio_command's options do."""
    command = [*MICROVM_ARGS, "-accel", accel, "-m", str(memory_mib), "-kernel", kernel]
    if cmdline is not None:
        command += ["-append", cmdline]
    for number, device in enumerate(devices):
        if device[0] == "rng":
            command += ["-device", "virtio-rng-device"]
        elif device[0] == "console":
            command += ["-chardev", "stdio,id=vcon,mux=on,signal=off", "-device", "virtio-serial-device,max_ports=1",
                        "-device", "virtconsole,chardev=vcon"]
            command[command.index("-serial") + 1] = "chardev:vcon"
        elif device[0] == "disk":
            _, path, readonly, disk_id = device
            options = ",readonly=on" if readonly else ""
            command += ["-drive", f"id=d{number},file={path},format=raw,if=none,discard=unmap{options}",
                        "-device", f"virtio-blk-device,drive=d{number},serial={disk_id}"]
    return command


def pyvmm_virtio_command(kernel, devices=(), cmdline=None, memory_mib=128, exit_path="fast",
                         timeout=PYVMM_TIMEOUT):
    """pyvmm with the same devices (see microvm_command); pyvmm places the
    console, then the entropy device, then the disks, so `devices` must come
    in that order."""
    extra = ["--exit-path", exit_path]
    for device in devices:
        if device[0] == "rng":
            extra.append("--rng=")
        elif device[0] == "console":
            extra += ["--console", "virtio"]
        elif device[0] == "disk":
            _, path, readonly, disk_id = device
            extra += ["--disk", f"path={path},id={disk_id}" + (",readonly=on" if readonly else "")]
    return pyvmm_command(kernel, cmdline=cmdline, memory_mib=memory_mib, timeout=timeout, extra=extra)


def run(command, stdin=b"", prompt=None, expect_output=None, timeout=DEFAULT_TIMEOUT):
    """Runs `command` and returns a Run.

    stdin: bytes written to the process's stdin, at once, or with `prompt`
    (bytes) only once the output contains it. stdin stays open until the
    end, as a terminal would.
    expect_output: stop (kill) once this many output bytes arrived; for
    guests that halt, which QEMU never ends.
    """
    process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE)
    pending = stdin
    if prompt is None:
        pending = _send(process, pending)
    output = b""
    stderr = b""
    deadline = time.monotonic() + timeout
    streams = [process.stdout, process.stderr]
    try:
        while streams and time.monotonic() < deadline:
            ready, _, _ = select.select(streams, [], [], 0.1)
            for stream in ready:
                chunk = os.read(stream.fileno(), 65536)
                if not chunk:           # closed: the process is exiting
                    streams.remove(stream)
                elif stream is process.stdout:
                    output += chunk
                else:
                    stderr += chunk
            if pending and prompt is not None and prompt in output:
                pending = _send(process, pending)
            if expect_output is not None and len(output) >= expect_output:
                break
        if not streams:
            try:
                process.wait(timeout=max(1.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
        status = process.poll()
    finally:
        if process.poll() is None:
            process.kill()
        process.wait()
        for stream in (process.stdin, process.stdout, process.stderr):
            try:
                stream.close()
            except OSError:
                pass
    return Run(status, output, stderr)


def _send(process, data):
    if data:
        try:
            process.stdin.write(data)
            process.stdin.flush()
        except BrokenPipeError:
            pass
    return b""


def run_qemu(kernel, stdin=b"", prompt=None, expect_output=None, timeout=DEFAULT_TIMEOUT,
             **options):
    """run(qemu_command(kernel, **options), ...)."""
    return run(qemu_command(kernel, **options), stdin, prompt, expect_output, timeout)


# The 32-bit guests' uart_init turns the UART's FIFOs on, which empties its
# receiver: a byte that arrives between the guest's last poll and that reset
# is lost (guests/lib/lib32.S). QEMU hands input to the UART one byte at a
# time from its main loop, so on a busy machine its run of a guest whose
# input was written before it started now and then loses a byte (the end of
# the input, say, and then waits for it). pyvmm keeps host input across the
# reset (Serial16550._clear_rx). Such a reference run is run again; a pyvmm
# run never is.
REFERENCE_ATTEMPTS = 3
REFERENCE_TIMEOUT = 20      # a reference run that read all its input is done in well under a second


def run_qemu_reference(kernel, stdin, read_all, expect_output=None, **options):
    """run_qemu(kernel, stdin, ...), once more while read_all(run) is false
    (it missed some of `stdin`, see above), REFERENCE_ATTEMPTS runs at most;
    the last Run."""
    for _ in range(REFERENCE_ATTEMPTS):
        reference = run_qemu(kernel, stdin, expect_output=expect_output, timeout=REFERENCE_TIMEOUT, **options)
        if read_all(reference):
            break
    return reference


def run_pyvmm(kernel, stdin=b"", prompt=None, expect_output=None, timeout=DEFAULT_TIMEOUT,
              **options):
    """run(pyvmm_command(kernel, **options), ...)."""
    return run(pyvmm_command(kernel, **options), stdin, prompt, expect_output, timeout)
