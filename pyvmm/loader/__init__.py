"""Kernel loaders: put an image into guest memory and say how to enter it.

Each format module offers `probe(image) -> bool` and
`load(image, memory, options) -> BootSpec`; `load_kernel` picks the first
whose probe accepts the image. Raw binaries have no header to probe, so
they are loaded only when the user names an entry mode.
"""

from . import bzimage, elf, multiboot, pvh, raw
from .common import BootSpec, LoaderError, LoadOptions

# Tried in order, as QEMU's -kernel does: a Linux setup header first, then a
# multiboot header (it wins over the ELF it may sit in), then an ELF with a
# PVH entry note, then any ELF.
FORMATS = (bzimage, multiboot, pvh, elf)


__all__ = ["BootSpec", "LoaderError", "LoadOptions", "load_kernel", "detect"]


def detect(image, options=None):
    """The loader module for `image`, or LoaderError when none fits."""
    if options is not None and options.raw_mode:
        return raw
    if not image:
        raise LoaderError("the kernel image is empty")
    for module in FORMATS:
        if module.probe(image):
            return module
    raise LoaderError("unknown kernel format (not a bzImage, multiboot or ELF); "
                      "to boot a flat binary, give --raw-mode real|protected|long")


def load_kernel(image, memory, options=None):
    options = options or LoadOptions()
    module = detect(image, options)
    given = [name for name, present in (("initrd", options.initrd is not None),
                                        ("modules", bool(options.modules))) if present]
    for name in given:
        if name not in getattr(module, "ACCEPTS", ()):
            raise LoaderError(f"{_format_name(module, options)} kernels take no {name}"
                              f"{_HINTS.get((module, name), '')}")
    return module.load(image, memory, options)


_HINTS = {
    (multiboot, "initrd"): "; pass it as a multiboot module",
    (bzimage, "modules"): "; Linux takes its initrd as --initrd",
}


def _format_name(module, options):
    if module is raw:
        return f"raw {options.raw_mode}-mode"
    return {bzimage: "bzImage", multiboot: "multiboot", pvh: "PVH", elf: "plain ELF"}[module]
