"""Where qlp_ray finds the files it ships: one resolver for the repository's ``configs/``.

``configs/`` at the top of the repository is the one source of the YAML/JSON files the
design names (default.yaml, hardware.yaml, prices.yaml, tune/, experiments/, grafana/,
kuberay/). Nothing keeps a second copy in git: building a wheel copies the directory into
the package as ``qlp_ray/_configs/`` (``setup.py``, ``build_py``). So a file is read

- from the source checkout when qlp_ray runs from one (``pip install -e .`` or
  ``PYTHONPATH``): edits show at once;
- else from the installed package data (``pip install .`` / a wheel).

The bundled samples under ``qlp_ray/data/`` are ordinary package data beside the code that
reads them.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from qlp_ray.core.errors import ConfigError

PACKAGE_DIR = Path(__file__).resolve().parent.parent
# The repository root when qlp_ray runs from a checkout; in an install, site-packages.
REPO_ROOT = PACKAGE_DIR.parent
CONFIGS_DIR_NAME = "configs"
# Where the build puts the copy of configs/ inside the package.
PACKAGED_CONFIGS = "_configs"


def source_checkout() -> Path | None:
    """The repository root if qlp_ray runs from a source checkout, else None."""
    marker = REPO_ROOT / CONFIGS_DIR_NAME / "default.yaml"
    if (REPO_ROOT / "pyproject.toml").is_file() and marker.is_file():
        return REPO_ROOT
    return None


def configs_dir() -> Path:
    """The directory of the shipped configs: the checkout's ``configs/``, else the package
    data copy (which :func:`shipped_config` checks when it reads a file)."""
    root = source_checkout()
    if root is not None:
        return root / CONFIGS_DIR_NAME
    return Path(str(resources.files("qlp_ray") / PACKAGED_CONFIGS))


def shipped_config(name: str | Path) -> Path:
    """Path of a shipped config file, e.g. ``shipped_config("prices.yaml")`` or
    ``shipped_config("tune/lora.yaml")``; :class:`ConfigError` names it when missing."""
    rel = Path(name)
    if rel.is_absolute() or ".." in rel.parts:
        raise ConfigError(f"shipped config name must be relative to configs/, got {str(name)!r}")
    path = configs_dir() / rel
    if not path.is_file():
        raise ConfigError(
            f"shipped config {str(rel)!r} not found at {path} (neither a source checkout nor "
            "an installed qlp_ray with its package data; reinstall qlp_ray)"
        )
    return path


__all__ = ["REPO_ROOT", "configs_dir", "shipped_config", "source_checkout"]
