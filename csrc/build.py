"""Builds pyvmm._kvm, the cffi extension (API mode) over <linux/kvm.h>.

Run by setuptools through `cffi_modules`; one module per C header, joined
here, in the style of pyca/cryptography's _cffi_src.
"""

import os
import sys

import cffi

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import helpers  # noqa: E402
import kvm_api  # noqa: E402
import fastpath  # noqa: E402

MODULES = (kvm_api, helpers, fastpath)

ffibuilder = cffi.FFI()
ffibuilder.cdef("\n".join(getattr(m, "TYPES", "") + getattr(m, "FUNCTIONS", "") for m in MODULES))
ffibuilder.set_source(
    "pyvmm._kvm",
    "\n".join(m.INCLUDES for m in MODULES),
    sources=[os.path.relpath(os.path.join(HERE, name)) for name in ("helpers.c", "fastpath.c")],
    include_dirs=[os.path.relpath(HERE)],
    extra_compile_args=["-O2", "-Wall"],
)

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
