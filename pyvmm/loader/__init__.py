"""Kernel loaders: put an image into guest memory and say how to enter it.

Each format module offers `probe(image) -> bool` and
`load(image, memory, options) -> BootSpec`; `load_kernel` picks the first
whose probe accepts the image. Raw binaries have no header to probe, so
they are loaded only when the user names an entry mode.
"""

from . import elf, raw
from .common import BootSpec, LoaderError, LoadOptions, place

# Tried in order; formats with a stronger signature come first.
FORMATS = (elf,)

__all__ = ["BootSpec", "LoaderError", "LoadOptions", "load_kernel", "detect", "place"]


def detect(image, options=None):
    """The loader module for `image`, or LoaderError when none fits."""
    if options is not None and options.raw_mode:
        return raw
    if not image:
        raise LoaderError("the kernel image is empty")
    for module in FORMATS:
        if module.probe(image):
            return module
    raise LoaderError("unknown kernel format (not ELF); "
                      "to boot a flat binary, give --raw-mode real|protected|long")


def load_kernel(image, memory, options=None):
    options = options or LoadOptions()
    return detect(image, options).load(image, memory, options)
