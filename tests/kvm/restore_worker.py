"""Restores a snapshot in a process of its own and runs it to its end; prints
what the differential test compares, as one JSON line:
{"output": hex, "status", "reason", "devices": every device's final state}.

    python restore_worker.py DIR [recorders]

`recorders`: the snapshot has the exits.bin test devices (snapshot_devices.py).
"""

import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from snapshot_devices import exits_devices  # noqa: E402

from pyvmm.machine import Machine  # noqa: E402


def main(directory, kind=""):
    devices = [(bus, base, length, device, name) for bus, base, length, device, name in exits_devices()] \
        if kind == "recorders" else []
    with Machine.restore(directory, devices=devices, serial="buffer", timeout=60) as machine:
        result = machine.run()
        print(json.dumps({"output": machine.serial_output.hex(), "status": result.status,
                          "reason": result.reason, "devices": machine.devices.save_state()}))


if __name__ == "__main__":
    main(*sys.argv[1:])
