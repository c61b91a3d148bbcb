"""Fetching a stock Debian kernel and busybox, and caching them with the initramfs.

The kernel is the versioned package that the metapackage
linux-image-cloud-amd64 depends on (linux-image-6.1.0-NN-cloud-amd64 on
bookworm), busybox comes from busybox-static; both are fetched with
`apt-get download` and unpacked with `dpkg-deb -x`. `apt-get update` runs
only when apt does not know the package, or when a download fails (stale
package lists name files the mirror no longer has).

Cache layout, in $XDG_CACHE_HOME/pyvmm/linux or ~/.cache/pyvmm/linux:

    vmlinuz              the bzImage (boot/vmlinuz-VERSION of the package)
    busybox              bin/busybox of busybox-static
    initramfs.cpio.gz    build_initramfs() around that busybox
    modules/             the kernel's virtio-mmio, -blk, -console, -rng and -net
                         modules (VIRTIO_MODULES), for guests that load them
    COMPLETE             the kernel version (uname -r), written last
    .lock                held while fetching, so that fetches queue up
    .tmp-*/              work space of a running fetch (a killed one's is
                         removed by the next fetch)

Only a cache with COMPLETE is used; a fetch deletes COMPLETE first, builds
everything in .tmp-*/ and moves each file into place with os.replace, so an
interrupted fetch never leaves a set that looks complete.
"""

import contextlib
import fcntl
import glob
import os
import shutil
import subprocess
import tempfile

from .errors import AssetError
from .initramfs import build_initramfs

KERNEL_METAPACKAGE = "linux-image-cloud-amd64"
BUSYBOX_PACKAGE = "busybox-static"

KERNEL_FILE = "vmlinuz"
BUSYBOX_FILE = "busybox"
INITRAMFS_FILE = "initramfs.cpio.gz"
COMPLETE_FILE = "COMPLETE"
LOCK_FILE = ".lock"
WORK_PREFIX = ".tmp-"

MODULES_DIR = "modules"
# The virtio modules of the cloud kernel (all =m there) under lib/modules/VERSION/,
# in an order that loads each after what it depends on.
VIRTIO_MODULES = ("kernel/drivers/virtio/virtio_ring.ko", "kernel/drivers/virtio/virtio.ko",
                  "kernel/drivers/virtio/virtio_mmio.ko", "kernel/drivers/block/virtio_blk.ko",
                  "kernel/drivers/char/virtio_console.ko", "kernel/drivers/char/hw_random/virtio-rng.ko",
                  "kernel/net/core/failover.ko", "kernel/drivers/net/net_failover.ko",
                  "kernel/drivers/net/virtio_net.ko")

# apt gives up on a dead mirror by itself; this only bounds a hung command.
COMMAND_TIMEOUT = 900


class CommandFailed(AssetError):
    """A command ran and exited with a non-zero status."""


class Assets:
    """Paths of the cached kernel, initramfs and busybox, the kernel version,
    and the kernel's virtio modules the package holds, in loading order."""

    def __init__(self, kernel, initramfs, version, busybox, modules=()):
        self.kernel = kernel
        self.initramfs = initramfs
        self.version = version
        self.busybox = busybox
        self.modules = tuple(modules)

    def __eq__(self, other):
        return isinstance(other, Assets) and vars(self) == vars(other)

    def __repr__(self):
        return (f"Assets(kernel={self.kernel!r}, initramfs={self.initramfs!r}, "
                f"version={self.version!r}, busybox={self.busybox!r}, modules={self.modules!r})")


def default_cache_dir():
    base = os.environ.get("XDG_CACHE_HOME", "")
    if not os.path.isabs(base):  # the XDG spec says to ignore a relative one
        base = os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "pyvmm", "linux")


def fetch(cache_dir=None, refresh=False):
    """The cached assets, fetched and built first when the cache is not
    complete or `refresh` is true. Raises AssetError."""
    return fetch_once(os.path.abspath(cache_dir or default_cache_dir()), refresh, cached, _fetch_into)


def fetch_once(cache_dir, refresh, cached_in, fetch_into):
    """cached_in(cache_dir), or else fetch_into(cache_dir) under the cache's
    lock, so that processes sharing a cache fetch it once."""
    if not refresh:
        assets = cached_in(cache_dir)
        if assets is not None:
            return assets
    try:
        os.makedirs(cache_dir, exist_ok=True)
    except OSError as error:
        raise AssetError(f"cannot create the cache {cache_dir}: {error.strerror or error}") from None
    with locked(cache_dir):
        if not refresh:
            assets = cached_in(cache_dir)   # another process may have fetched it while we waited
            if assets is not None:
                return assets
        return fetch_into(cache_dir)


def cached(cache_dir):
    """The assets in `cache_dir` when it is complete, else None. Runs no command."""
    try:
        with open(os.path.join(cache_dir, COMPLETE_FILE)) as marker:
            version = marker.read().strip()
    except OSError:
        return None
    assets = _assets_in(cache_dir, version)
    if not version or not all(map(os.path.isfile, (assets.kernel, assets.initramfs, assets.busybox))) \
            or not os.path.isdir(os.path.join(cache_dir, MODULES_DIR)):
        return None
    return assets


def _assets_in(cache_dir, version):
    modules = os.path.join(cache_dir, MODULES_DIR)
    return Assets(kernel=os.path.join(cache_dir, KERNEL_FILE),
                  initramfs=os.path.join(cache_dir, INITRAMFS_FILE),
                  version=version,
                  busybox=os.path.join(cache_dir, BUSYBOX_FILE),
                  modules=[path for path in (os.path.join(modules, os.path.basename(module))
                                             for module in VIRTIO_MODULES) if os.path.isfile(path)])


@contextlib.contextmanager
def locked(cache_dir):
    """Holds the cache's lock file, so that fetches into one cache queue up."""
    try:
        lock = open(os.path.join(cache_dir, LOCK_FILE), "w")
    except OSError as error:
        raise AssetError(f"cannot write to the cache {cache_dir}: {error.strerror or error}") from None
    with lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def fresh_work_dir(cache_dir):
    """Marks the cache incomplete, drops a killed fetch's work space and
    makes a new one; the caller holds the cache's lock."""
    try:
        _remove_quietly(os.path.join(cache_dir, COMPLETE_FILE))
        for stale in glob.glob(os.path.join(cache_dir, WORK_PREFIX + "*")):
            shutil.rmtree(stale, ignore_errors=True)
        return tempfile.mkdtemp(prefix=WORK_PREFIX, dir=cache_dir)
    except OSError as error:
        raise AssetError(f"cannot write to the cache {cache_dir}: {error.strerror or error}") from None


def _fetch_into(cache_dir):
    """Fetches and builds everything; the caller holds the cache's lock."""
    work = fresh_work_dir(cache_dir)
    try:
        kernel, version, tree = _fetch_kernel(work)
        modules = _copy_modules(tree, version, os.path.join(work, MODULES_DIR))
        busybox = _fetch_busybox(work)
        initramfs = build_initramfs(busybox, os.path.join(work, INITRAMFS_FILE))
        marker = os.path.join(work, COMPLETE_FILE)
        with open(marker, "w") as out:
            out.write(version + "\n")
        shutil.rmtree(os.path.join(cache_dir, MODULES_DIR), ignore_errors=True)
        for built, name in ((kernel, KERNEL_FILE), (busybox, BUSYBOX_FILE), (initramfs, INITRAMFS_FILE),
                            (modules, MODULES_DIR), (marker, COMPLETE_FILE)):
            os.replace(built, os.path.join(cache_dir, name))
    except OSError as error:
        raise AssetError(f"cannot write to the cache {cache_dir}: {error.strerror or error}") from None
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return _assets_in(cache_dir, version)


def _fetch_kernel(work):
    """(path of the unpacked bzImage, its version, the unpacked package) for the cloud kernel."""
    package = resolve_kernel_package()
    tree = unpack(download(package, work), os.path.join(work, "kernel"))
    images = glob.glob(os.path.join(tree, "boot", "vmlinuz-*"))
    if len(images) != 1:
        raise AssetError(f"the package {package} holds {len(images)} boot/vmlinuz-* files, not one")
    return images[0], os.path.basename(images[0])[len("vmlinuz-"):], tree


def _copy_modules(tree, version, folder):
    """The folder, holding those VIRTIO_MODULES the kernel package has."""
    os.mkdir(folder)
    for module in VIRTIO_MODULES:
        path = os.path.join(tree, "lib", "modules", version, module)
        if os.path.isfile(path):
            shutil.copyfile(path, os.path.join(folder, os.path.basename(module)))
    return folder


def _fetch_busybox(work):
    tree = unpack(download(BUSYBOX_PACKAGE, work), os.path.join(work, "busybox"))
    for candidate in ("bin/busybox", "usr/bin/busybox"):
        path = os.path.join(tree, candidate)
        if os.path.isfile(path):
            return path
    raise AssetError(f"the package {BUSYBOX_PACKAGE} holds no bin/busybox")


def resolve_kernel_package(metapackage=None):
    """The versioned kernel package a metapackage (default: the cloud kernel's)
    depends on, e.g. "linux-image-6.1.0-56-cloud-amd64"; updates apt's lists if
    it must."""
    metapackage = metapackage or KERNEL_METAPACKAGE
    step = f"cannot resolve the kernel package of {metapackage}"
    output = _run_with_fresh_lists(step, ["apt-cache", "depends", metapackage])
    for line in output.splitlines():
        kind, _, name = line.strip().lstrip("|").partition(":")
        name = name.strip()
        if kind == "Depends" and name.startswith("linux-image-") and name != metapackage:
            return name
    raise AssetError(f"{step}: `apt-cache depends {metapackage}` names no linux-image-* package")


def download(package, work):
    """The .deb of `package`, downloaded into a fresh folder under `work`."""
    folder = tempfile.mkdtemp(prefix="deb-", dir=work)
    step = f"cannot download {package}"
    _run_with_fresh_lists(step, ["apt-get", "download", package], cwd=folder)
    debs = glob.glob(os.path.join(folder, "*.deb"))
    if len(debs) != 1:
        raise AssetError(f"{step}: `apt-get download {package}` left {len(debs)} .deb files, not one")
    return debs[0]


def unpack(deb, tree):
    _run(f"cannot unpack {os.path.basename(deb)}", ["dpkg-deb", "-x", deb, tree])
    return tree


def _run_with_fresh_lists(step, argv, cwd=None):
    """_run, retried once after `apt-get update` when apt fails: its lists may
    be missing or name files the mirror no longer has."""
    try:
        return _run(step, argv, cwd)
    except CommandFailed as first_error:
        try:
            _run("cannot update the package lists", ["apt-get", "update"])
        except AssetError:
            raise first_error from None  # the first command's error says more
        return _run(step, argv, cwd)


def _run(step, argv, cwd=None):
    """stdout of the command; AssetError naming `step` and its last error line."""
    command = " ".join(argv)
    try:
        result = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, errors="replace",
                                env=dict(os.environ, LC_ALL="C"), timeout=COMMAND_TIMEOUT)
    except FileNotFoundError:
        raise AssetError(f"{step}: {argv[0]} is not installed "
                         "(the Linux guest assets need a Debian-based host with apt)") from None
    except subprocess.TimeoutExpired:
        raise AssetError(f"{step}: `{command}` did not finish in {COMMAND_TIMEOUT} s") from None
    except OSError as error:
        raise AssetError(f"{step}: cannot run `{command}`: {error.strerror or error}") from None
    if result.returncode != 0:
        raise CommandFailed(f"{step}: `{command}` exited with status {result.returncode}: "
                         f"{_last_error_line(result.stderr, result.stdout)}")
    return result.stdout


def _last_error_line(stderr, stdout):
    """apt's last "E:" line (its warnings can come after it), else the last line."""
    lines = [line.strip() for line in (stderr or stdout).splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("E:")]
    if errors:
        return errors[-1]
    return lines[-1] if lines else "(no output)"


def _remove_quietly(path):
    try:
        os.remove(path)
    except FileNotFoundError:
        pass
