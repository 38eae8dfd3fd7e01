"""``qlp eval``: evaluate the base model or an adapter, and show the leaderboard."""

from __future__ import annotations

import json
import time
from dataclasses import asdict
from pathlib import Path

import typer

from qlp_ray.cli.common import console, fail, get_config
from qlp_ray.core.errors import QLPError
from qlp_ray.evaluate.charts import write_eval_report
from qlp_ray.evaluate.leaderboard import Leaderboard, default_leaderboard_path
from qlp_ray.evaluate.placed_run import describe
from qlp_ray.evaluate.suite import run_evaluation

app = typer.Typer(
    help="Evaluate adapters: metrics, grade, recommendations, leaderboard.", no_args_is_help=True
)


def _fmt(value: float) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


@app.command("run")
def run(
    domain: str = typer.Option(..., "--domain", "-d", help="Skill domain of the eval set."),
    adapter: str | None = typer.Option(None, "--adapter", "-a", help="Adapter id (default: base)."),
    version: int | None = typer.Option(
        None, "--version", help="Adapter version (default: current)."
    ),
    data: Path | None = typer.Option(
        None, "--data", help="JSONL eval set (default: held-out samples)."
    ),
    limit: int | None = typer.Option(None, "--limit", min=1, help="Evaluate only the first N."),
    baseline: bool = typer.Option(
        True, "--baseline/--no-baseline", help="Compare with the base model."
    ),
    record: bool = typer.Option(
        True, "--record/--no-record", help="Add the result to the leaderboard."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON."),
    report_dir: Path | None = typer.Option(
        None,
        "--report-dir",
        help="Where report.html + metrics.png go (default: <home>/evaluations/reports/<run>).",
    ),
) -> None:
    """Score, grade and (optionally) compare one model on a domain's eval set."""
    from rich.table import Table

    cfg = get_config()
    try:
        result = run_evaluation(
            cfg,
            domain=domain,
            adapter_id=adapter,
            version=version,
            data=data,
            limit=limit,
            baseline=baseline,
            record=record,
        )
    except QLPError as exc:
        fail(str(exc))
        return
    rep = result.report
    stamp = time.strftime("%Y%m%d-%H%M%S")
    html_path = write_eval_report(
        report_dir
        or cfg.paths.root / "evaluations" / "reports" / f"{result.target}-{domain}-{stamp}",
        rep,
        target=result.target,
        domain=domain,
        dataset=str(result.dataset),
        baseline_metrics=result.baseline_metrics,
    )
    if as_json:
        typer.echo(
            json.dumps(
                {
                    "target": result.target,
                    "domain": domain,
                    "leaderboard_id": result.leaderboard_id,
                    "report_html": str(html_path),
                    "ran_on": result.where,
                    **rep.to_dict(),
                },
                indent=1,
                default=str,
            )
        )
        return
    table = Table(title=f"{result.target} on {Path(result.dataset).name}")
    table.add_column("metric")
    table.add_column("value", justify="right")
    if result.baseline_metrics:
        table.add_column("base model", justify="right")
        table.add_column("change", justify="right")
    for name, value in rep.metrics.items():
        row = [name, _fmt(value)]
        if result.baseline_metrics:
            delta = rep.comparison.deltas.get(name) if rep.comparison else None
            base = result.baseline_metrics.get(name)
            mark = (
                ""
                if delta is None or delta.better is None
                else ("[green]+[/]" if delta.better else "[red]-[/]")
            )
            row += [
                _fmt(base) if base is not None else "",
                f"{mark} {delta.delta:+.4g}" if delta else "",
            ]
        table.add_row(*row)
    console.print(table)
    verdict = "[green]PASS[/]" if rep.passed else "[red]FAIL[/]"
    score = f", score {rep.score:.3f}" if rep.score is not None else ""
    console.print(f"grade [bold]{rep.grade}[/]{score}: {verdict}")
    for failure in rep.failures:
        console.print(f"  [red]x[/] {failure}")
    if rep.comparison:
        console.print(f"vs base model: [bold]{rep.comparison.verdict}[/]")
    for r in rep.recommendations:
        console.print(f"  -> [yellow]{r.code}[/]: {r.message}")
    if result.leaderboard_id is not None:
        console.print(f"recorded on the leaderboard as #{result.leaderboard_id}")
    console.print(f"report with charts: {html_path}", soft_wrap=True)
    if result.where:
        console.print(describe(result.where), soft_wrap=True)


@app.command("leaderboard")
def leaderboard(
    domain: str | None = typer.Option(None, "--domain", "-d", help="Only this domain."),
    metric: str = typer.Option("score", "--metric", help="Rank by 'score' or a metric name."),
    limit: int = typer.Option(10, "--limit", min=1, help="Rows to show."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """The best evaluation of each adapter, ranked."""
    from rich.table import Table

    entries = Leaderboard(default_leaderboard_path(get_config())).top(
        domain=domain, metric=metric, limit=limit
    )
    if as_json:
        typer.echo(json.dumps([asdict(e) for e in entries], indent=1))
        return
    if not entries:
        console.print("no evaluations recorded yet (run `qlp eval run`)")
        return
    table = Table(title=f"leaderboard by {metric}" + (f" ({domain})" if domain else ""))
    for col in ("#", "adapter", "domain", "grade", "pass", metric, "perplexity", "run"):
        table.add_column(col)
    for rank, e in enumerate(entries, 1):
        value = e.score if metric == "score" else e.metrics.get(metric)
        table.add_row(
            str(rank),
            e.adapter_id,
            e.domain,
            e.grade,
            "yes" if e.passed else "no",
            _fmt(value) if value is not None else "",
            _fmt(e.metrics.get("perplexity", "")),
            f"#{e.id}",
        )
    console.print(table)
