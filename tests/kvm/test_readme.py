"""The README's device example runs as written."""

import pathlib
import re

README = pathlib.Path(__file__).resolve().parents[2] / "README.md"


def test_readme_device_example_counts_the_guest_writes(capsys):
    code = re.search(r"```python\n(.*?)```", README.read_text(), re.S).group(1)
    namespace = {}
    exec(compile(code, str(README), "exec"), namespace)
    printed = capsys.readouterr().out.split()
    assert namespace["counter"].count == 100000      # bench_exit's default loop count
    assert printed[:2] == ["1", "100000"]
