"""Builds the cffi extension and bundles the tiny test guests.

The guests are assembled with the machine's gcc/as/ld by `make -C guests`
and shipped inside the package with guests/README.md (which says what each
one shows), so `pyvmm run` and `pyvmm guests` work right after install.
Objects and intermediate ELFs stay in the build's temporary directory:
the wheel carries only the guests themselves.
"""

import os
import shutil
import subprocess

from setuptools import setup
from setuptools.command.build_py import build_py

HERE = os.path.dirname(os.path.abspath(__file__))


class BuildPyWithGuests(build_py):
    def run(self):
        super().run()
        out = os.path.join(os.path.abspath(self.build_lib), "pyvmm", "guests")
        objects = os.path.join(os.path.abspath(self.get_finalized_command("build").build_temp),
                               "guests-obj")
        os.makedirs(out, exist_ok=True)
        subprocess.check_call(["make", "-s", "-C", os.path.join(HERE, "guests"), f"OUT={out}",
                               f"OBJ={objects}"])
        shutil.copy(os.path.join(HERE, "guests", "README.md"), os.path.join(out, "README.md"))


setup(
    cffi_modules=["csrc/build.py:ffibuilder", "csrc/build.py:sandbox_ffibuilder"],
    cmdclass={"build_py": BuildPyWithGuests},
)
