"""``qlp config dump``: the configuration as commented YAML, generated from the models.

``qlp config dump --output configs/default.yaml`` regenerates the shipped defaults file
(a test checks that it equals this output).
"""

from __future__ import annotations

from pathlib import Path

import typer

from qlp_ray.cli.common import console, get_config
from qlp_ray.core.config import dump_defaults, dump_effective

app = typer.Typer(help="Inspect the configuration.", no_args_is_help=True)


@app.command("dump")
def dump_cmd(
    output: Path | None = typer.Option(
        None, "--output", "-o", help="Write the YAML to this file instead of stdout."
    ),
    effective: bool = typer.Option(
        False,
        "--effective",
        help="The values this invocation uses (--config / QLP_CONFIG file and QLP_* "
        "environment applied, secrets redacted) instead of the defaults.",
    ),
) -> None:
    """Print every option with its description as a comment (defaults unless --effective)."""
    text = dump_effective(get_config()) if effective else dump_defaults()
    if output is None:
        typer.echo(text, nl=False)  # plain: rich would read [a, b] as markup
        return
    output.write_text(text)
    console.print(f"wrote {output}")
