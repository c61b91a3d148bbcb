"""`--device MODULE:CLASS@...` finds MODULE as `python -m` does, and says where
it looked when it cannot. Imports fail before /dev/kvm is opened."""

import os
import subprocess
import sys

import pytest

from pyvmm.config import ConfigError
from pyvmm.user_devices import parse_device_spec

# The installed `pyvmm` script's view: no current directory on the path.
PYVMM = [sys.executable, "-I", "-c", "import sys; from pyvmm.cli import main; sys.exit(main())"]


def test_a_missing_module_names_the_search_path_current_directory_first(tmp_path):
    result = subprocess.run([*PYVMM, "run", "--device", "nodev:Thing@0x560"], cwd=tmp_path,
                            capture_output=True, timeout=60)
    stderr = result.stderr.decode()
    assert result.returncode == 2
    assert stderr.count("\n") == 1
    prefix = "pyvmm: error: --device: cannot import nodev: no module 'nodev' on the search path "
    assert stderr.startswith(prefix)
    path = stderr[len(prefix):].rstrip("\n").split(os.pathsep)
    assert path[0] == str(tmp_path)


def test_an_error_inside_the_module_is_named(tmp_path, monkeypatch):
    (tmp_path / "needsmore.py").write_text("import not_installed_anywhere\n")
    (tmp_path / "raises.py").write_text("raise RuntimeError('half written')\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [entry for entry in sys.path if entry not in ("", os.getcwd())])
    with pytest.raises(ConfigError, match=r"^--device: cannot import needsmore: "
                                          r"No module named 'not_installed_anywhere'$"):
        parse_device_spec("needsmore:Thing@0x560").create()
    with pytest.raises(ConfigError, match=r"^--device: cannot import raises: RuntimeError: half written$"):
        parse_device_spec("raises:Thing@0x560").create()
    assert sys.path[0] == str(tmp_path)
