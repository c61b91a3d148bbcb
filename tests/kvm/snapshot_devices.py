"""User devices that can be snapshotted, for the snapshot tests (and their
restore worker, a process of its own)."""

from example_devices import Recorder


class SnapshotRecorder(Recorder):
    """exits.bin's test device: its answers and its log are its state."""

    def save_state(self):
        return {"log": [[op, offset, value.hex() if isinstance(value, bytes) else value]
                        for op, offset, value in self.log]}

    def restore_state(self, state):
        if not isinstance(state, dict) or set(state) != {"log"} or not isinstance(state["log"], list):
            raise ValueError(f"not a recorder's state: {state!r}")
        self.log = [(op, offset, bytes.fromhex(value) if op == "write" else value)
                    for op, offset, value in state["log"]]


def exits_devices():
    """(bus, base, length, device, name) of the devices exits.bin talks to."""
    return [("port", 0x500, 0x10, SnapshotRecorder({0x1: 0xA1, 0x2: 0xB2B1, 0x4: 0xC4C3C2C1, 0xD: 0x7E, 0xF: 2}),
             "recorder"),
            ("mmio", 0xD0000000, 0x1000, SnapshotRecorder({0x10: 0xD4D3D2D1, 0x20: 0xE1}), "recorder")]
