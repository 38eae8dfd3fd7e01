"""``qlp tune``: search LoRA hyperparameters with Ray Tune + Optuna + ASHA."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from qlp_ray.cli.common import console, fail, get_config, stdout_for_json
from qlp_ray.core.errors import QLPError
from qlp_ray.core.paths import shipped_config
from qlp_ray.train.pipeline import run_pipeline
from qlp_ray.tune.search import load_space, run_tune

app = typer.Typer(
    help="Hyperparameter search (Ray Tune + Optuna + ASHA), one Ray Train run per trial."
)

DEFAULT_SPACE = shipped_config("tune/lora.yaml")


@app.callback(invoke_without_command=True)
def tune(
    domain: str = typer.Option(..., "--domain", "-d", help="Domain whose samples train/evaluate."),
    space: Path = typer.Option(DEFAULT_SPACE, "--space", help="Search space YAML."),
    trials: int | None = typer.Option(
        None, "--trials", "-n", min=1, help="Trials (default: config)."
    ),
    output: Path | None = typer.Option(
        None, "--output", "-o", help="Best adapter + config go here."
    ),
    register: str | None = typer.Option(
        None, "--register", help="Register the best adapter under this adapter id (signed)."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
) -> None:
    """Run the search, print every trial, save (and optionally register) the best."""
    from rich.table import Table

    cfg = get_config()
    out = output or cfg.paths.runs / f"tune-best-{domain}"
    try:
        with stdout_for_json(as_json):
            result = run_tune(
                cfg, domain=domain, space=load_space(space), trials=trials, output_dir=out
            )
            record = None
            if register:
                record = run_pipeline(
                    cfg, domain=domain, adapter_id=register, train=result.best_adapter
                ).record
    except QLPError as exc:
        fail(str(exc))
        return
    if as_json:
        typer.echo(
            json.dumps(
                {
                    "best_config": result.best_config,
                    "best_eval_loss": result.best_eval_loss,
                    "trials": result.trials,
                    "output": str(out),
                    "optuna_study": result.study_name,
                    "optuna_storage": result.optuna_storage,
                    "mlflow_run_id": result.tracking_run[1] if result.tracking_run else None,
                    "registered": record.summary() if record else None,
                },
                indent=1,
                default=str,
            )
        )
        return
    table = Table(title=f"tuning {domain}: {len(result.trials)} trials")
    keys = sorted({k for t in result.trials for k in t["params"]})
    for col in ("#", *keys, "eval loss", "evals", "status"):
        table.add_column(col)
    ranked = sorted(result.trials, key=lambda t: (t["eval_loss"] is None, t["eval_loss"] or 0))
    for i, t in enumerate(ranked, 1):
        loss = t["eval_loss"]
        table.add_row(
            str(i),
            *[
                f"{t['params'].get(k):.4g}"
                if isinstance(t["params"].get(k), float)
                else str(t["params"].get(k))
                for k in keys
            ],
            f"{loss:.4f}" if loss is not None else "",
            str(t["iterations"] or ""),
            "error" if t["error"] else ("[green]best[/]" if i == 1 else "done"),
        )
    console.print(table)
    console.print(f"best config saved to {out / 'tune_best.json'}")
    console.print(
        f"Optuna study {result.study_name} in {result.optuna_storage} "
        f"(optuna-dashboard {result.optuna_storage})"
    )
    if result.tracking_run is not None:
        console.print(f"MLflow run {result.tracking_run[1]} at {result.tracking_run[0]}")
    if record is not None:
        console.print(f"registered {record.adapter_id} v{record.version}")
