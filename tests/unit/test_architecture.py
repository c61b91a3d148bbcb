"""The package boundaries README's architecture section draws, checked on the
source: what each package of pyvmm may import, and who may touch the
generated cffi module."""

import ast
import pathlib

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parents[2] / "pyvmm"

# pyvmm's own packages (and top-level modules) each part may import; the
# standard library is always allowed.
ALLOWED = {
    "kvm": {"_kvm"},
    "memory": set(),
    "devices": set(),                                   # no KVM: devices fuzz without it
    "arch": {"devices", "memory"},
    "loader": {"arch", "memory", "guests"},             # guests: the default kernel
    "run": {"kvm", "devices", "_kvm"},
    "machine": {"arch", "console", "config", "devices", "guests", "kvm", "loader", "memory", "run", "gdb",
                "sandbox", "virtio_options"},                   # virtio_options: the devices in a snapshot's config
    "gdb": {"config", "kvm", "memory", "run"},
    "api": {"machine"},                                 # Machine's public API only
    "config": {"arch"},
    "console": set(),
    "guests": set(),
    "terminal": set(),
    "user_devices": {"config"},
    "virtio_options": {"arch", "config", "devices"},
    "sandbox": {"_sandbox"},                            # its own cffi module; nothing else of pyvmm
}
# Who may import the cffi module itself: the KVM layer, and the C helpers' own wrappers.
CFFI_USERS = {"kvm", "run/fast.py", "run/deferred.py"}


def modules():
    for path in sorted(PACKAGE.rglob("*.py")):
        relative = path.relative_to(PACKAGE)
        part = relative.parts[0].removesuffix(".py")
        yield relative, part, ast.parse(path.read_text(), str(path))


def pyvmm_imports(relative, tree):
    """The first component below pyvmm of everything `tree` imports from pyvmm."""
    depth = len(relative.parts) - 1                  # packages between pyvmm/ and the module
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:                            # relative: climb to pyvmm/, then descend
                up = node.level - 1
                if up < depth:
                    continue                          # inside its own package
                names = (node.module or "").split(".") if node.module else [a.name for a in node.names]
                found.add(names[0])
            elif node.module and node.module.startswith("pyvmm."):
                found.add(node.module.split(".")[1])
        elif isinstance(node, ast.Import):
            found |= {alias.name.split(".")[1] for alias in node.names if alias.name.startswith("pyvmm.")}
    return found


@pytest.mark.parametrize("relative, part, tree", list(modules()), ids=lambda value: str(value))
def test_each_package_imports_only_what_the_architecture_allows(relative, part, tree):
    if part not in ALLOWED:
        return                                        # cli, testing, linux: users of the public API
    imported = pyvmm_imports(relative, tree) - {part}
    assert imported <= ALLOWED[part], f"pyvmm/{relative} imports {sorted(imported - ALLOWED[part])}"


def test_only_the_kvm_layer_and_the_c_wrappers_touch_the_cffi_module():
    users = set()
    for relative, part, tree in modules():
        if "_kvm" in pyvmm_imports(relative, tree):
            users.add(part if part == "kvm" else str(relative))
    assert users == CFFI_USERS


def test_only_the_sandbox_touches_its_cffi_module():
    users = {part for relative, part, tree in modules() if "_sandbox" in pyvmm_imports(relative, tree)}
    assert users == {"sandbox"}
