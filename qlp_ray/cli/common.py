"""Shared pieces of the ``qlp`` commands: consoles, the invocation's config, ``fail``."""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Iterator
from pathlib import Path

import typer
from rich.console import Console

from qlp_ray.core.config import QLPConfig, load_config

console = Console()
err_console = Console(stderr=True)


class _State:
    config_path: Path | None = None
    _config: QLPConfig | None = None
    console_script: bool = False  # run as `qlp` (a process of its own), not in-process

    @property
    def config(self) -> QLPConfig:
        if self._config is None:
            self._config = load_config(self.config_path)
        return self._config


state = _State()


def get_config() -> QLPConfig:
    """The effective config of this CLI invocation (loaded once)."""
    return state.config


def fail(message: str, code: int = 1) -> None:
    """Print an error and exit non-zero."""
    err_console.print(f"[bold red]error:[/] {message}")
    raise typer.Exit(code)


@contextlib.contextmanager
def stdout_for_json(as_json: bool) -> Iterator[None]:
    """With ``--json``, everything printed while the block runs (progress, Ray workers'
    logs forwarded to this driver) goes to stderr, so stdout holds only the JSON."""
    if not as_json:
        yield
        return
    with contextlib.redirect_stdout(sys.stderr):
        yield


def batch_encoder(cfg: QLPConfig):
    """``encode(texts)`` for a command's bulk embedding (``qlp router train|eval``, ``qlp
    label next``): on the scheduler's device actors (``embedding`` workloads) when
    ``router.offload`` is not ``never`` and a Ray cluster runs (``RAY_ADDRESS`` or qlp's
    own); otherwise, or without a scheduler or a capable device, in this process (the
    reason is logged)."""
    from qlp_ray.core.runtime import connect_existing
    from qlp_ray.route.embeddings import get_embedder

    model = cfg.router.embedding_model

    def local(texts):
        return get_embedder(model).encode(list(texts))

    if cfg.router.offload == "never":
        return local
    if not connect_existing(cfg):
        logging.getLogger(__name__).info(
            "embedding in this process: no running Ray cluster for router.offload"
        )
        return local
    from actors.offload import DeviceOffload  # lazy: loads ray

    return DeviceOffload(cfg.router.offload, cfg.hardware).encoder(local, model)
