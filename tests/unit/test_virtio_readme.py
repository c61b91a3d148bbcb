"""The README's example of fuzzing one's own virtio device runs as written."""

import pathlib
import re

from pyvmm.devices.virtio.device import VirtioDevice

README = pathlib.Path(__file__).resolve().parents[2] / "README.md"


class MyDevice(VirtioDevice):
    """Fills every writable byte with 0x55."""

    device_id = 0x77

    def handle(self, queue_index, chain):
        return chain.write(b"\x55" * chain.writable_length)


def test_readme_virtio_fuzzing_example_runs():
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
    code = next(block for block in blocks if "hostile_chains" in block)
    namespace = {"MyDevice": MyDevice}
    exec(compile(code, str(README), "exec"), namespace)
    namespace["test_my_device_survives"]()
