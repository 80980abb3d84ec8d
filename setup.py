# setuptools needs cffi_modules here; everything else lives in pyproject.toml
# (cffi issue #55: cffi_modules cannot be declared in pyproject.toml yet).
from setuptools import setup

setup(cffi_modules=["csrc/build.py:ffibuilder"])
