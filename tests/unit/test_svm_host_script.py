"""The SVM host's command script and module ordering, without QEMU: the
script is run by this machine's /bin/sh exactly as L1 runs it."""

import json
import subprocess

import pytest

from pyvmm.linux.errors import AssetError
from pyvmm.testing.svm import assets
from pyvmm.testing.svm.host import command_script
from pyvmm.testing.svm.linux_guest import LinuxRun


def run_script(tmp_path, argv, env, timeout=30):
    script = tmp_path / "1.sh"
    script.write_text(command_script(argv, str(tmp_path), env, timeout))
    return subprocess.run(["/bin/sh", str(script)], capture_output=True, text=True)


def test_argv_cwd_and_environment_arrive_verbatim(tmp_path):
    odd = ["it's", "$HOME", "a b", "", "*", "\\n", "`id`"]
    code = "import os, sys, json; print(json.dumps([sys.argv[1:], os.getcwd(), dict(os.environ)]))"
    # LC_ALL set: Python adds LC_CTYPE to a C-locale environment (PEP 538).
    env = {"PATH": "/usr/bin:/bin", "LC_ALL": "C.UTF-8", "ODD": "x'y \"z\" $HOME `id`"}
    result = run_script(tmp_path, ["/usr/bin/python3", "-c", code, *odd], env)
    argv, cwd, seen = json.loads(result.stdout)
    assert (argv, cwd) == (odd, str(tmp_path))
    assert seen == env


def test_status_comes_through_and_a_missing_folder_is_126(tmp_path):
    assert run_script(tmp_path, ["/bin/sh", "-c", "exit 9"], {}).returncode == 9
    script = tmp_path / "2.sh"
    script.write_text(command_script(["true"], str(tmp_path / "absent"), {}, 5))
    assert subprocess.run(["/bin/sh", str(script)], capture_output=True).returncode == 126


def test_timeout_is_124(tmp_path):
    assert run_script(tmp_path, ["/bin/sleep", "30"], {}, timeout=1).returncode == 124


def test_module_load_order_puts_dependencies_first(tmp_path, monkeypatch):
    tree = {"a": "b,c", "b": "c", "c": "", "d-e": "a", "unused": ""}
    for name in tree:
        (tmp_path / f"{name}.ko").write_bytes(b"")
    monkeypatch.setattr(assets, "read_module", lambda path: path)
    monkeypatch.setattr(assets, "modinfo", lambda path: {"depends": tree[path.rsplit("/", 1)[1][:-3]]})
    order = [name for name, _ in assets.load_order(str(tmp_path), ["d_e"])]
    assert order == ["c", "b", "a", "d_e"]


def test_a_missing_or_cyclic_module_is_one_line(tmp_path, monkeypatch):
    tree = {"a": "b", "b": "a", "c": "nowhere"}
    for name in tree:
        (tmp_path / f"{name}.ko").write_bytes(b"")
    monkeypatch.setattr(assets, "read_module", lambda path: path)
    monkeypatch.setattr(assets, "modinfo", lambda path: {"depends": tree[path.rsplit("/", 1)[1][:-3]]})
    with pytest.raises(AssetError, match="cycle: a -> b"):
        assets.load_order(str(tmp_path), ["a"])
    with pytest.raises(AssetError, match="no module nowhere"):
        assets.load_order(str(tmp_path), ["c"])


def test_modinfo_reads_the_section_of_a_real_elf():
    # A minimal ELF64 with a .modinfo section, built here byte by byte.
    import struct
    modinfo = b"license=GPL\0depends=virtio,virtio_ring\0name=virtio_pci\0"
    names = b"\0.modinfo\0.shstrtab\0"
    body_at = 64
    names_at = body_at + len(modinfo)
    shoff = (names_at + len(names) + 7) & ~7
    header = bytearray(b"\x7fELF\x02\x01\x01" + bytes(9))
    header += struct.pack("<HHIQQQIHHHHHH", 1, 62, 1, 0, 0, shoff, 0, 64, 0, 0, 64, 3, 2)
    sections = [bytes(64),
                struct.pack("<IIQQQQIIQQ", 1, 1, 0, 0, body_at, len(modinfo), 0, 0, 1, 0),
                struct.pack("<IIQQQQIIQQ", 10, 3, 0, 0, names_at, len(names), 0, 0, 1, 0)]
    elf = bytes(header) + modinfo + names
    elf += bytes(shoff - len(elf)) + b"".join(sections)
    assert assets.modinfo(elf) == {"license": "GPL", "depends": "virtio,virtio_ring", "name": "virtio_pci"}
    with pytest.raises(AssetError):
        assets.modinfo(b"not an elf" * 10)


def test_linux_run_splits_the_script_output_from_the_console():
    console = ("[    0.1] booting\r\npyvmm-script: begin\r\nline 1\r\nline 2\r\n"
               "pyvmm-script: end status 5\r\n[    2.0] reboot: Power down\r\n")
    run = LinuxRun(0, console, "")
    assert (run.script_status, run.script_output) == (5, "line 1\nline 2\n")
    unfinished = LinuxRun(124, "pyvmm-script: begin\nwaiting\n", "")
    assert (unfinished.script_status, unfinished.script_output) == (None, "waiting\n")
    assert LinuxRun(125, "kernel panic\n", "").script_output == ""


def test_run_lock_waits_for_the_other_holder_and_gives_up(tmp_path, monkeypatch, capsys):
    from pyvmm.testing.svm import SvmHostError
    from pyvmm.testing.svm import host
    path = str(tmp_path / ".run-lock")
    holder = subprocess.Popen(["flock", path, "sleep", "3"])
    try:
        for _ in range(100):                        # until the other process holds it
            if subprocess.run(["flock", "-n", path, "true"]).returncode:
                break
        monkeypatch.setattr(host, "LOCK_TIMEOUT", 1)
        with pytest.raises(SvmHostError, match="another SVM host held"):
            host._take_run_lock(path)
        assert "another SVM host runs on this machine" in capsys.readouterr().err
        monkeypatch.setattr(host, "LOCK_TIMEOUT", 30)
        lock = host._take_run_lock(path)             # once the holder ends
        assert holder.poll() is not None
        lock.close()
    finally:
        holder.kill()
        holder.wait()
