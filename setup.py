"""Build hooks: the Cython extension(s) in ``cython_ext/`` and the shipped ``configs/``.

Everything else about the package lives in ``pyproject.toml``; this file only
holds the build steps ``pip install .`` runs with no manual step. If the compiler
or OpenMP is missing the package still installs and ``qlp_ray.route.vector`` falls
back to numpy.

``configs/`` stays at the top of the repository (one copy in git); ``build_py`` copies
it into the built package as ``qlp_ray/_configs/`` so a wheel carries the files the
library reads at run time (``qlp_ray.core.paths.shipped_config`` finds them).
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import numpy as np
from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext
from setuptools.command.build_py import build_py

HERE = Path(__file__).resolve().parent
CONFIGS = HERE / "configs"
PACKAGED_CONFIGS = Path("qlp_ray") / "_configs"  # = qlp_ray.core.paths.PACKAGED_CONFIGS


class BuildPyWithConfigs(build_py):
    """``build_py`` plus a copy of ``configs/`` as package data (not in editable mode: an
    editable install reads the checkout's ``configs/`` directly)."""

    def _config_files(self) -> list[Path]:
        return sorted(p for p in CONFIGS.rglob("*") if p.is_file() and "__pycache__" not in p.parts)

    def run(self) -> None:
        super().run()
        if self.editable_mode:
            return
        if not (CONFIGS / "default.yaml").is_file():
            raise FileNotFoundError(f"{CONFIGS} is missing: the wheel would ship no configs")
        dest = Path(self.build_lib) / PACKAGED_CONFIGS
        if dest.exists():
            shutil.rmtree(dest)
        for src in self._config_files():
            out = dest / src.relative_to(CONFIGS)
            self.mkpath(str(out.parent))
            self.copy_file(str(src), str(out), preserve_mode=False)

    def get_outputs(self, include_bytecode: bool = True) -> list[str]:  # type: ignore[override]
        outputs = super().get_outputs(include_bytecode)
        if self.editable_mode:
            return outputs
        dest = Path(self.build_lib) / PACKAGED_CONFIGS
        return outputs + [str(dest / p.relative_to(CONFIGS)) for p in self._config_files()]


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


setup(
    ext_modules=_extensions(),
    cmdclass={"build_ext": OptionalBuildExt, "build_py": BuildPyWithConfigs},
)
