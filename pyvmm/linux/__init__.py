"""Linux guest assets: a stock Debian cloud kernel and a busybox initramfs.

    from pyvmm.linux import fetch
    assets = fetch()   # Assets(kernel=..., initramfs=..., version=..., busybox=...)

assets.py says where the cache lives and how it is filled; initramfs.py says
what /init does and which marker lines it prints. Every failure is an
AssetError whose message is one line for the user.
"""

from .assets import Assets, default_cache_dir, fetch
from .errors import AssetError
from .initramfs import build_initramfs

__all__ = ["AssetError", "Assets", "build_initramfs", "default_cache_dir", "fetch"]
