"""Builds the cffi extension and bundles the tiny test guests.

The guests are assembled with the machine's gcc/as/ld by `make -C guests`
and shipped inside the package, so `pyvmm run` works right after install.
"""

import os
import subprocess

from setuptools import setup
from setuptools.command.build_py import build_py

HERE = os.path.dirname(os.path.abspath(__file__))


class BuildPyWithGuests(build_py):
    def run(self):
        super().run()
        out = os.path.join(os.path.abspath(self.build_lib), "pyvmm", "guests")
        subprocess.check_call(["make", "-s", "-C", os.path.join(HERE, "guests"), f"OUT={out}"])


setup(
    cffi_modules=["csrc/build.py:ffibuilder"],
    cmdclass={"build_py": BuildPyWithGuests},
)
