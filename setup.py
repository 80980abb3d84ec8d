# setuptools needs cffi_modules here; everything else lives in pyproject.toml
# (cffi issue #55: cffi_modules cannot be declared in pyproject.toml yet).
# Packages are discovered, not listed, so a new subpackage cannot be left out;
# daemons/ (beside fabric/ in the source tree) installs as fabric.daemons.
from setuptools import find_packages, setup

packages = find_packages(include=["fabric", "fabric.*"])
packages += ["fabric.daemons"] + [f"fabric.daemons.{p}" for p in find_packages("daemons")]

setup(
    packages=packages,
    package_dir={"fabric.daemons": "daemons"},
    cffi_modules=["csrc/build.py:ffibuilder"],
)
