"""Shared pieces of the ``qlp`` commands: consoles, the invocation's config, ``fail``."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console

from qlp_ray.core.config import QLPConfig, load_config

console = Console()
err_console = Console(stderr=True)


class _State:
    config_path: Path | None = None
    _config: QLPConfig | None = None

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
