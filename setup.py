"""Build hook for the Cython extension(s) in ``cython_ext/``.

Everything else about the package lives in ``pyproject.toml``; this file only
declares compiled extensions so that ``pip install .`` builds them with no
manual step. If the compiler or OpenMP is missing the package still installs
and ``qlp_ray.route.vector`` falls back to numpy.
"""

from __future__ import annotations

import os
import sys

import numpy as np
from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext


class OptionalBuildExt(build_ext):
    """Build extensions, but never fail the whole install if one cannot compile."""

    def run(self) -> None:
        try:
            super().run()
        except Exception as exc:  # noqa: BLE001 - report and continue with the fallback
            sys.stderr.write(f"WARNING: Cython extensions not built ({exc}); numpy fallback\n")

    def build_extension(self, ext: Extension) -> None:
        try:
            super().build_extension(ext)
        except Exception as exc:  # noqa: BLE001
            sys.stderr.write(f"WARNING: extension {ext.name} not built ({exc})\n")


def _extensions() -> list[Extension]:
    from Cython.Build import cythonize

    openmp = [] if sys.platform == "darwin" or os.environ.get("QLP_NO_OPENMP") else ["-fopenmp"]
    exts = [
        Extension(
            "qlp_ray._vector_ext",
            ["cython_ext/vector_search.pyx"],
            include_dirs=[np.get_include(), "cython_ext"],
            depends=["cython_ext/vs_kernels.h"],
            extra_compile_args=["-O3", "-march=native", *openmp],
            extra_link_args=openmp,
            define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
        )
    ]
    return cythonize(exts, language_level=3, compiler_directives={"boundscheck": False})


setup(ext_modules=_extensions(), cmdclass={"build_ext": OptionalBuildExt})
