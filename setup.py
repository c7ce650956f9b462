"""Build the optional native record walker; all metadata lives in pyproject.toml.

``optional=True``: without a C compiler the build goes on and kelp.batchcheck falls back to
its pure-Python walker.
"""

from setuptools import Extension, setup

setup(ext_modules=[Extension("kelp._recordwalk", ["kelp/_recordwalk.c"], optional=True)])
