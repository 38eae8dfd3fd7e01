"""``qlp optimize``: quantize or prune the base model and report the change."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from qlp_ray.cli.common import console, fail, get_config
from qlp_ray.core.errors import QLPError
from qlp_ray.evaluate.placed_run import describe
from qlp_ray.optimize.run import run_optimization_placed

app = typer.Typer(
    help="Quantize (INT8) or prune the model; report size, speed and quality.", no_args_is_help=True
)


@app.command("run")
def run(
    method: str | None = typer.Option(
        None,
        "--method",
        "-m",
        help="dynamic-int8 | static-int8 | magnitude | structured (default: config).",
    ),
    sparsity: float | None = typer.Option(None, "--sparsity", help="Pruning target 0.1-0.9."),
    domain: str = typer.Option(
        "api", "--domain", "-d", help="Domain whose samples measure quality."
    ),
    output: Path | None = typer.Option(None, "--output", "-o", help="Save model + report here."),
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON."),
) -> None:
    """Optimise once and compare with the original in the same run."""
    from rich.table import Table

    try:
        rep, where = run_optimization_placed(
            get_config(), method=method, sparsity=sparsity, domain=domain, output=output
        )
    except QLPError as exc:
        fail(str(exc))
        return
    if as_json:
        typer.echo(json.dumps({**rep.to_dict(), "ran_on": where}, indent=1, default=str))
        return
    o, n = rep.original, rep.optimized
    target = f" (target sparsity {rep.sparsity_target:.0%})" if rep.sparsity_target else ""
    table = Table(title=f"{rep.method}{target}")
    for col in ("", "original", "optimised", "change"):
        table.add_column(col, justify="right")
    table.add_row(
        "size (MB, file)",
        f"{o.size_bytes / 1e6:.2f}",
        f"{n.size_bytes / 1e6:.2f}",
        f"x{n.size_bytes / o.size_bytes:.2f}",
    )
    table.add_row(
        "size (MB, sparse)",
        f"{o.sparse_bytes / 1e6:.2f}",
        f"{n.sparse_bytes / 1e6:.2f}",
        f"x{rep.size_ratio:.2f}",
    )
    table.add_row("sparsity", f"{o.sparsity:.1%}", f"{n.sparsity:.1%}", "")
    table.add_row(
        "perplexity", f"{o.perplexity:.3f}", f"{n.perplexity:.3f}", f"{rep.perplexity_change:+.1%}"
    )
    table.add_row("forward p50 (ms)", f"{o.p50_ms:.2f}", f"{n.p50_ms:.2f}", "")
    table.add_row(
        "tokens/s", f"{o.tokens_per_s:.0f}", f"{n.tokens_per_s:.0f}", f"x{rep.speedup:.2f}"
    )
    console.print(table)
    if output is not None:
        console.print(f"saved to {output}")
    console.print(describe(where), soft_wrap=True)
