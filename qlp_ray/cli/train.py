"""``qlp train``: train one adapter on Ray Train, then sign and register it."""

from __future__ import annotations

from pathlib import Path

import typer

from qlp_ray.cli.common import console, fail, get_config
from qlp_ray.core.errors import QLPError
from qlp_ray.core.runtime import ensure_ray
from qlp_ray.train import PEFT_METHODS, methods_phrase
from qlp_ray.train.pipeline import train_and_register
from qlp_ray.train.run_metrics import CURVE_CSV, CURVE_PNG

app = typer.Typer()


@app.command("train")
def train(
    domain: str = typer.Option(..., "--domain", "-d", help="Domain of the capsules, e.g. api."),
    data: Path = typer.Option(..., "--data", help="Training capsules (JSONL)."),
    heldout: Path | None = typer.Option(
        None, "--heldout", help="Held-out capsules (JSONL); default: split off train.eval_fraction."
    ),
    method: str | None = typer.Option(
        None, "--method", help=f"PEFT method: {', '.join(PEFT_METHODS)} (default: config)."
    ),
    workers: int | None = typer.Option(None, "--workers", help="Ray Train workers (DDP)."),
    steps: int | None = typer.Option(None, "--steps", help="Optimizer steps."),
    adapter_id: str | None = typer.Option(
        None, "--adapter-id", help="Registry id (default: the domain)."
    ),
    rank: int | None = typer.Option(None, "--rank", help="LoRA rank r (default: config)."),
    alpha: int | None = typer.Option(None, "--alpha", help="LoRA alpha (default: config)."),
    dropout: float | None = typer.Option(None, "--dropout", help="LoRA dropout (default: config)."),
    batch_size: int | None = typer.Option(None, "--batch-size", help="Per-worker batch size."),
    learning_rate: float | None = typer.Option(None, "--lr", help="Peak learning rate."),
    run_name: str | None = typer.Option(
        None, "--run-name", help="Run directory name under <home>/runs (default: generated)."
    ),
) -> None:
    """Train on Ray Train (TRL SFT + PEFT), measure held-out loss, sign and register.

    The run directory (<home>/runs/<run>) receives metrics.jsonl and the loss curve
    (loss_curve.csv, loss_curve.png).
    """
    from rich.table import Table

    if method is not None and method not in PEFT_METHODS:
        fail(f"--method must be {methods_phrase()}, got {method!r}")
        return
    for label, path in (("--data", data), ("--heldout", heldout)):
        if path is not None and not path.is_file():
            fail(f"{label} file not found: {path}")
            return

    cfg = get_config()
    try:
        with console.status("starting Ray", spinner="dots") as status:
            how = ensure_ray(cfg, persistent=False)  # RAY_ADDRESS, else an in-process local Ray
            console.log(f"Ray: {how}")

            def progress(message: str) -> None:  # the pipeline also logs each stage
                status.update(message)

            record = train_and_register(
                cfg,
                domain=domain,
                data_path=data,
                heldout_path=heldout,
                adapter_id=adapter_id,
                method=method,
                workers=workers,
                steps=steps,
                progress=progress,
                overrides={"rank": rank, "alpha": alpha, "dropout": dropout,
                           "batch_size": batch_size, "learning_rate": learning_rate},
                run_name=run_name,
            )  # fmt: skip
    except QLPError as exc:
        fail(str(exc))
        return

    metrics = record.metadata.get("metrics", {})
    table = Table(title="trained adapter")
    for column in ("adapter", "version", "method", "eval loss before → after", "steps", "signed"):
        table.add_column(column)
    table.add_row(
        record.adapter_id,
        f"v{record.version}",
        str(record.metadata.get("method", "")),
        f"{metrics.get('eval_loss_before', float('nan')):.4f} → "
        f"{metrics.get('eval_loss_after', float('nan')):.4f}",
        str(metrics.get("steps", "")),
        "[green]yes[/]" if record.signed else f"[red]no[/] ({record.problem})",
    )
    console.print(table)
    console.print(
        f"{metrics.get('tokens_per_s', 0):.0f} tokens/s, {metrics.get('seconds', 0):.1f} s "
        f"of training; stored at {record.path}",
        soft_wrap=True,
    )
    run = record.metadata.get("run", {}).get("run_name")
    if run:
        curve = cfg.paths.runs / run / CURVE_PNG
        if curve.is_file():
            console.print(f"loss curve: {curve} (+ {CURVE_CSV})", soft_wrap=True)
