"""The ``qlp`` command line. Output goes through rich; the library itself only logs.

Each command group lives in its own ``qlp_ray/cli_<group>.py`` module exposing a
``typer.Typer`` called ``app``; this file only wires them together.
"""

from __future__ import annotations

import logging
from pathlib import Path

import typer
from rich.console import Console
from rich.logging import RichHandler

from qlp_ray.config import QLPConfig, load_config
from qlp_ray.errors import QLPError

console = Console()
err_console = Console(stderr=True)

app = typer.Typer(
    name="qlp",
    help="qlp_ray: train, sign, serve, route and improve a fleet of LoRA adapters on Ray.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)


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


@app.callback()
def main(
    config: Path | None = typer.Option(None, "--config", "-c", help="User YAML config file."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Debug logging."),
) -> None:
    state.config_path = config
    state._config = None
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(message)s",
        handlers=[RichHandler(console=err_console, show_path=False)],
    )


def fail(message: str, code: int = 1) -> None:
    """Print an error and exit non-zero."""
    err_console.print(f"[bold red]error:[/] {message}")
    raise typer.Exit(code)


def run() -> None:
    """Entry point that turns qlp_ray errors into a message and exit code 2."""
    try:
        app()
    except QLPError as exc:
        err_console.print(f"[bold red]error:[/] {exc}")
        raise SystemExit(2) from None


# --- command groups (each module adds its own commands) -------------------------------
# Registered at the bottom to avoid import cycles: cli_* modules import `get_config`.
def _register() -> None:
    import importlib

    for module_name, group in [
        ("qlp_ray.cli_demo", None),  # top-level `qlp demo`
        ("qlp_ray.cli_keys", "keys"),
        ("qlp_ray.cli_adapters", "adapters"),
        ("qlp_ray.cli_router", "router"),
        ("qlp_ray.cli_serve", None),  # top-level `qlp serve`, `qlp shutdown`
        ("qlp_ray.cli_devices", None),  # top-level `qlp devices`
        ("qlp_ray.cli_train", None),  # top-level `qlp train`
        ("qlp_ray.cli_data", "data"),
        ("qlp_ray.cli_label", "label"),
        ("qlp_ray.cli_improve", "improve"),
        ("qlp_ray.cli_eval", "eval"),
        ("qlp_ray.cli_optimize", "optimize"),
        ("qlp_ray.cli_tune", "tune"),
    ]:
        module = importlib.import_module(module_name)
        app.add_typer(module.app, name=group)


_register()
