"""``pip install .`` as a user runs it: the wheel built from a copy of the source tree (what
an sdist holds), installed with ``--no-deps`` into a fresh venv.

The new venv's dependencies come from this venv's site-packages through a plain path line
in a ``.pth`` file (no re-download; a plain line does not run the editable-install finder
there, so the checkout stays invisible). Run its commands from a directory outside the
checkout, or ``python -c`` would import the checkout's ``qlp_ray``.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
# What an sdist carries (MANIFEST.in + the packages); the build needs nothing else.
SOURCE_ITEMS = ("qlp_ray", "actors", "cython_ext", "configs", "setup.py", "pyproject.toml",
                "README.md", "MANIFEST.in")  # fmt: skip
IGNORE = shutil.ignore_patterns("__pycache__", "*.pyc", "*.so", "*.c", "*.egg-info", "build")
# Files the installed package reads at run time: package data, not checkout files.
SHIPPED = ("qlp_ray/_configs/prices.yaml", "qlp_ray/_configs/default.yaml",
           "qlp_ray/_configs/tune/lora.yaml", "qlp_ray/py.typed",
           "qlp_ray/data/samples/api.train.jsonl")  # fmt: skip


def run(cmd: list[str], *, timeout: float, **kwargs) -> subprocess.CompletedProcess[str]:
    """``cmd``, which must succeed; its output tail is the failure message."""
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kwargs)
    assert proc.returncode == 0, (
        f"{' '.join(cmd)} -> {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    )
    return proc


def build_wheel(tmp: Path) -> Path:
    """The wheel ``pip wheel .`` builds from a copy of the sdist's files, under ``tmp``."""
    src = tmp / "src"
    src.mkdir()
    for item in SOURCE_ITEMS:
        path = REPO / item
        if path.is_dir():
            shutil.copytree(path, src / item, ignore=IGNORE)
        elif path.is_file():
            shutil.copy2(path, src / item)
    out = tmp / "dist"
    run([sys.executable, "-m", "pip", "wheel", str(src), "--no-deps", "-q", "-w", str(out)],
        timeout=900, cwd=src)  # fmt: skip
    (wheel,) = out.glob("qlp_ray-*.whl")
    return wheel


def fresh_venv(tmp: Path, wheel: Path) -> Path:
    """``tmp/venv`` with ``wheel`` installed and this venv's packages as its dependencies."""
    venv = tmp / "venv"
    run([sys.executable, "-m", "venv", "--without-pip", str(venv)], timeout=120)
    python = venv / "bin" / "python"
    run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "-q",
         str(wheel)], timeout=300)  # fmt: skip
    site = Path(
        run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            timeout=60).stdout.strip()
    )  # fmt: skip
    # the dependencies: this venv's site-packages as a plain path, after the new venv's own
    (site / "zz_main_venv_deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return venv
