"""Builds the cffi extensions (API mode): pyvmm._kvm over <linux/kvm.h>, and
pyvmm._sandbox over libseccomp's <seccomp.h> (used by pyvmm.sandbox only).

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
import sandbox  # noqa: E402
import seccomp_api  # noqa: E402

MODULES = (kvm_api, helpers, fastpath)
SANDBOX_MODULES = (seccomp_api, sandbox)


def _cdef(modules):
    return "\n".join(getattr(m, "TYPES", "") + getattr(m, "FUNCTIONS", "") for m in modules)


ffibuilder = cffi.FFI()
ffibuilder.cdef(_cdef(MODULES))
ffibuilder.set_source(
    "pyvmm._kvm",
    "\n".join(m.INCLUDES for m in MODULES),
    sources=[os.path.relpath(os.path.join(HERE, name)) for name in ("helpers.c", "fastpath.c")],
    include_dirs=[os.path.relpath(HERE)],
    extra_compile_args=["-O2", "-Wall"],
)

sandbox_ffibuilder = cffi.FFI()
sandbox_ffibuilder.cdef(_cdef(SANDBOX_MODULES))
sandbox_ffibuilder.set_source(
    "pyvmm._sandbox",
    "\n".join(m.INCLUDES for m in SANDBOX_MODULES),
    sources=[os.path.relpath(os.path.join(HERE, "sandbox.c"))],
    include_dirs=[os.path.relpath(HERE)],
    libraries=["seccomp", "pthread"],
    extra_compile_args=["-O2", "-Wall"],
)

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
    sandbox_ffibuilder.compile(verbose=True)
