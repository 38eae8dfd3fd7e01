"""The ``qlp`` command line. Output goes through rich; the library itself only logs.

Each command group lives in its own module of this package exposing a ``typer.Typer``
called ``app``; this module only wires them together.
"""

from __future__ import annotations

import logging
from pathlib import Path

import typer
from rich.logging import RichHandler

from qlp_ray.cli import (
    adapters,
    data,
    demo,
    devices,
    eval,
    improve,
    keys,
    label,
    optimize,
    router,
    serve,
    train,
    tune,
    ui,
)
from qlp_ray.cli import config as config_group
from qlp_ray.cli.common import err_console, get_config, state
from qlp_ray.core.errors import QLPError
from qlp_ray.core.runtime import prepare_client

app = typer.Typer(
    name="qlp",
    help="qlp_ray: train, sign, serve, route and improve a fleet of LoRA adapters on Ray.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)


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
    if state.console_script:  # the process's environment is ours to set
        try:
            prepare_client(get_config())  # before any command imports Ray
        except QLPError:
            pass  # a bad config is reported by the command that reads it


def run() -> None:
    """Entry point that turns qlp_ray errors into a message and exit code 2."""
    state.console_script = True
    try:
        app()
    except QLPError as exc:
        err_console.print(f"[bold red]error:[/] {exc}")
        raise SystemExit(2) from None


for _module, _group in [
    (demo, None),  # top-level `qlp demo`
    (keys, "keys"),
    (adapters, "adapters"),
    (router, "router"),
    (serve, None),  # top-level `qlp serve`, `qlp shutdown`
    (devices, None),  # top-level `qlp devices`
    (train, None),  # top-level `qlp train`
    (data, "data"),
    (label, "label"),
    (improve, "improve"),
    (eval, "eval"),
    (optimize, "optimize"),
    (tune, "tune"),
    (config_group, "config"),
    (ui, None),  # top-level `qlp ui`
]:
    app.add_typer(_module.app, name=_group)
