"""The SVM test host's kernel and initramfs, fetched once and cached.

The kernel is Debian's generic one (the package linux-image-amd64 depends
on, fetched with `apt-get download` and unpacked with `dpkg-deb -x`, as
pyvmm.linux does for the guest's cloud kernel): unlike the cloud kernel it
ships kvm-amd, 9p and overlayfs as modules. The initramfs holds busybox (the
one pyvmm.linux.fetch() caches), the modules MODULES need, in load order
(their dependencies read from each module's .modinfo), and host_init.INIT.

Cache layout, in $XDG_CACHE_HOME/pyvmm/svm or ~/.cache/pyvmm/svm:

    vmlinuz              the bzImage
    initramfs.cpio.gz    busybox, lib/modules/*.ko, lib/modules/load-order, init
    COMPLETE             "VERSION FORMAT" (uname -r, and FORMAT below), written last
    .lock, .tmp-*/       as in pyvmm.linux.assets

A cache whose FORMAT is not this module's is fetched again, so a change to
the init script or the module list reaches every machine.
"""

import glob
import lzma
import os
import shutil
import struct

from pyvmm.linux import assets as linux_assets
from pyvmm.linux.cpio import CpioWriter
from pyvmm.linux.errors import AssetError

from . import host_init

KERNEL_METAPACKAGE = "linux-image-amd64"
# What the host needs; their dependencies come along (virtio_ring, netfs, kvm, ccp, ...).
MODULES = ("virtio_pci", "9pnet_virtio", "9p", "overlay", "kvm_amd", "tun")
# Bump when the initramfs changes meaning (init script, module list).
FORMAT = f"3-{host_init.VERSION}"

KERNEL_FILE = "vmlinuz"
INITRAMFS_FILE = "initramfs.cpio.gz"
COMPLETE_FILE = "COMPLETE"
APPLETS = ("sh", "cat", "chroot", "echo", "grep", "insmod", "mkdir", "mount", "mv",
           "poweroff", "rm", "sleep", "uname")


class HostAssets:
    """Paths of the cached kernel and initramfs, and the kernel's version."""

    def __init__(self, kernel, initramfs, version):
        self.kernel = kernel
        self.initramfs = initramfs
        self.version = version

    def __repr__(self):
        return f"HostAssets(kernel={self.kernel!r}, initramfs={self.initramfs!r}, version={self.version!r})"


def default_cache_dir():
    return os.path.join(os.path.dirname(linux_assets.default_cache_dir()), "svm")


def fetch(cache_dir=None, refresh=False):
    """The cached host assets, fetched and built first when needed. Raises AssetError."""
    return linux_assets.fetch_once(os.path.abspath(cache_dir or default_cache_dir()), refresh, cached,
                                   _fetch_into)


def cached(cache_dir=None):
    """The assets when the cache is complete and of this FORMAT, else None. Runs no command."""
    cache_dir = os.path.abspath(cache_dir or default_cache_dir())
    try:
        with open(os.path.join(cache_dir, COMPLETE_FILE)) as marker:
            version, _, cache_format = marker.read().strip().partition(" ")
    except OSError:
        return None
    found = _assets_in(cache_dir, version)
    if not version or cache_format != FORMAT or \
            not all(map(os.path.isfile, (found.kernel, found.initramfs))):
        return None
    return found


def _assets_in(cache_dir, version):
    return HostAssets(os.path.join(cache_dir, KERNEL_FILE),
                      os.path.join(cache_dir, INITRAMFS_FILE), version)


def _fetch_into(cache_dir):
    busybox = linux_assets.fetch().busybox
    work = linux_assets.fresh_work_dir(cache_dir)
    try:
        package = linux_assets.resolve_kernel_package(KERNEL_METAPACKAGE)
        tree = linux_assets.unpack(linux_assets.download(package, work), os.path.join(work, "kernel"))
        images = glob.glob(os.path.join(tree, "boot", "vmlinuz-*"))
        if len(images) != 1:
            raise AssetError(f"the package {package} holds {len(images)} boot/vmlinuz-* files, not one")
        version = os.path.basename(images[0])[len("vmlinuz-"):]
        modules = load_order(os.path.join(tree, "lib", "modules", version), MODULES)
        with open(busybox, "rb") as binary:
            archive = initramfs_archive(binary.read(), modules)
        initramfs = os.path.join(work, INITRAMFS_FILE)
        with open(initramfs, "wb") as out:
            out.write(_gzip(archive))
        marker = os.path.join(work, COMPLETE_FILE)
        with open(marker, "w") as out:
            out.write(f"{version} {FORMAT}\n")
        for built, name in ((images[0], KERNEL_FILE), (initramfs, INITRAMFS_FILE),
                            (marker, COMPLETE_FILE)):
            os.replace(built, os.path.join(cache_dir, name))
    except OSError as error:
        raise AssetError(f"cannot build the SVM host assets in {cache_dir}: "
                         f"{error.strerror or error}") from None
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return _assets_in(cache_dir, version)


def _gzip(data):
    import gzip
    return gzip.compress(data, compresslevel=6, mtime=0)


# --- modules ---------------------------------------------------------------------------------

def module_name(path):
    """"kvm-amd" for .../kvm-amd.ko or .ko.xz, as the kernel names it: kvm_amd."""
    base = os.path.basename(path)
    for suffix in (".ko.xz", ".ko"):
        if base.endswith(suffix):
            return base[:-len(suffix)].replace("-", "_")
    return None


def read_module(path):
    """The module's ELF bytes (xz-compressed modules decompressed)."""
    with open(path, "rb") as file:
        data = file.read()
    return lzma.decompress(data) if path.endswith(".xz") else data


def modinfo(elf):
    """{key: value} of an ELF64 module's .modinfo section ("depends", "name", ...)."""
    if elf[:4] != b"\x7fELF" or elf[4] != 2 or elf[5] != 1:
        raise AssetError("a kernel module is not a little-endian ELF64 file")
    shoff, = struct.unpack_from("<Q", elf, 0x28)
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", elf, 0x3A)
    headers = [struct.unpack_from("<IIQQQQIIQQ", elf, shoff + i * shentsize) for i in range(shnum)]
    names_at = headers[shstrndx][4]
    for name, _, _, _, offset, size, *_ in headers:
        end = elf.index(b"\0", names_at + name)
        if elf[names_at + name:end] == b".modinfo":
            entries = elf[offset:offset + size].split(b"\0")
            return dict(entry.decode(errors="replace").partition("=")[::2] for entry in entries if b"=" in entry)
    return {}


def load_order(modules_dir, wanted):
    """[(name, path)] of `wanted` and everything they depend on, dependencies first."""
    paths = {}
    for directory, _, files in os.walk(modules_dir):
        for file in files:
            name = module_name(file)
            if name:
                paths[name] = os.path.join(directory, file)
    order, seen = [], set()

    def visit(name, chain):
        if name in seen:
            return
        if name in chain:
            raise AssetError(f"kernel modules depend on each other in a cycle: {' -> '.join(chain)}")
        if name not in paths:
            raise AssetError(f"the kernel package has no module {name} (needed by the SVM host)")
        depends = modinfo(read_module(paths[name])).get("depends", "")
        for dependency in filter(None, depends.split(",")):
            visit(dependency.replace("-", "_"), chain + [name])
        seen.add(name)
        order.append((name, paths[name]))

    for name in wanted:
        visit(name.replace("-", "_"), [])
    return order


def initramfs_archive(busybox, modules):
    """The uncompressed cpio archive: busybox, the modules in order, the init script."""
    cpio = CpioWriter()
    for directory in ("bin", "dev", "proc", "sys", "lib", "lib/modules", "newroot", "lower", "upper"):
        cpio.directory(directory)
    cpio.file("bin/busybox", busybox, mode=0o755)
    for applet in APPLETS:
        cpio.symlink(f"bin/{applet}", "/bin/busybox")
    cpio.char_device("dev/console", 5, 1, mode=0o600)
    cpio.char_device("dev/null", 1, 3, mode=0o666)
    for name, path in modules:
        cpio.file(f"lib/modules/{name}.ko", read_module(path))
    cpio.file("lib/modules/load-order", "".join(f"{name}\n" for name, _ in modules).encode())
    cpio.file("init", host_init.INIT.encode(), mode=0o755)
    return cpio.finish()
