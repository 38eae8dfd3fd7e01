"""``qlp train``: train one adapter on Ray Train, then sign and register it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from qlp_ray.cli.common import console, fail, get_config
from qlp_ray.core.errors import QLPError
from qlp_ray.core.runtime import ensure_ray
from qlp_ray.train.methods import METHOD_NAMES, METHODS, REWARD_KINDS
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
        None,
        "--method",
        help=f"Training method: {', '.join(METHOD_NAMES)} ('lora' = sft; default: the "
        "config's train.method, an SFT). See the README table for each method's data.",
    ),
    reward: str | None = typer.Option(
        None,
        "--reward",
        help=f"grpo/rloo/ppo reward: {' | '.join(REWARD_KINDS)} (keyword:a,b  domain[:name]  "
        "json  regex:<pattern>  reward-model:<id>[@version]).",
    ),
    teacher: str | None = typer.Option(
        None, "--teacher", help="distill: teacher adapter id[@version], or 'base'."
    ),
    parent: str | None = typer.Option(
        None,
        "--parent",
        help="dpo/ppo/grpo/rloo/distill: continue this registered adapter (id[@version]).",
    ),
    init: str | None = typer.Option(
        None,
        "--init",
        help="sft/adalora: the LoRA to start from: base (PEFT's init, default), meta (a "
        "Reptile meta-init over the registry's other domains, reused when registered with "
        "the same inputs) or a registered meta-init id[@version].",
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
    grad_accum: int | None = typer.Option(
        None, "--grad-accum", help="Micro-batches per optimizer step (default: config)."
    ),
    scheduler: str | None = typer.Option(
        None, "--scheduler", help="LR decay after warm-up: linear, cosine or constant."
    ),
    early_stopping: int | None = typer.Option(
        None,
        "--early-stopping",
        help="SFT: stop after this many held-out evaluations (every train.checkpoint_every "
        "steps) without improvement.",
    ),
    kl_coef: float | None = typer.Option(
        None, "--kl-coef", help="ppo: KL penalty weight (default: train.ppo.kl_coef)."
    ),
    kl_target: float | None = typer.Option(
        None, "--kl-target", help="ppo: adaptive KL control towards this KL per completion."
    ),
    clip_range: float | None = typer.Option(
        None, "--clip-range", help="ppo: ratio clip epsilon (default: train.ppo.clip_range)."
    ),
    ppo_epochs: int | None = typer.Option(
        None, "--ppo-epochs", help="ppo: passes over each rollout batch."
    ),
    run_name: str | None = typer.Option(
        None, "--run-name", help="Run directory name under <home>/runs (default: generated)."
    ),
) -> None:
    """Train on Ray Train with any method (SFT, DPO, GRPO, RLOO, reward model,
    distillation), measure its held-out metric before and after, sign and register.

    The data file is checked against the method's data shape before Ray starts. Every
    run directory (<home>/runs/<run>) receives metrics.jsonl and the loss curve
    (loss_curve.csv, loss_curve.png; PPO adds reward and KL).
    """
    from qlp_ray.train.method_runs import prepare_run, train_method_and_register
    from qlp_ray.train.ray_train import effective_train_config

    for label, path in (("--data", data), ("--heldout", heldout)):
        if path is not None and not path.is_file():
            fail(f"{label} file not found: {path}")
            return

    cfg = get_config()
    name = method or cfg.train.method  # the config's PEFT method: an SFT
    overrides = {"rank": rank, "alpha": alpha, "dropout": dropout,
                 "batch_size": batch_size, "learning_rate": learning_rate,
                 "grad_accum": grad_accum, "lr_scheduler": scheduler,
                 "early_stopping_patience": early_stopping}  # fmt: skip
    ppo = {"kl_coef": kl_coef, "kl_target": kl_target, "clip_range": clip_range,
           "ppo_epochs": ppo_epochs}  # fmt: skip
    given = [f"--{k.replace('_', '-')}" for k, v in ppo.items() if v is not None]
    if given and name != "ppo":
        fail(f"{', '.join(given)}: only for --method ppo (this run is {name})")
        return
    overrides["ppo"] = ppo
    try:
        effective_train_config(cfg, method="lora", overrides=overrides)  # before Ray starts
        run = prepare_run(
            cfg,
            name,
            domain=domain,
            data_path=data,
            heldout_path=heldout,
            reward=reward,
            teacher=teacher,
            parent=parent,
            init=init or "",
            workers=workers,
            steps=steps,
            overrides=overrides,
            run_name=run_name or "",
        )
    except QLPError as exc:
        param = getattr(exc, "param", None)
        named = ("method", "reward", "teacher", "parent", "init")
        option = f"--{param}: " if param in named else ""
        fail(f"{option}{exc}")
        return
    try:
        with console.status("starting Ray", spinner="dots") as status:
            how = ensure_ray(cfg, persistent=False)  # RAY_ADDRESS, else an in-process local Ray
            console.log(f"Ray: {how}")

            def progress(message: str) -> None:  # the pipeline also logs each stage
                status.update(message)

            run.progress = progress
            record = train_method_and_register(cfg, run, adapter_id=adapter_id)
    except QLPError as exc:
        fail(str(exc))
        return
    if run.spec.peft is None:
        _print_method_record(record, run.spec.name)
        _print_curve(cfg, record)
        return

    from rich.table import Table

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
    meta = record.metadata.get("meta_init")
    if meta:  # --init meta / <id@N>
        console.print(f"started from meta-init {meta['adapter_id']} v{meta['version']} "
                      f"(weights {meta['weights_sha256'][:12]})")  # fmt: skip
    console.print(
        f"{metrics.get('tokens_per_s', 0):.0f} tokens/s, {metrics.get('seconds', 0):.1f} s "
        f"of training; stored at {record.path}",
        soft_wrap=True,
    )
    _print_curve(cfg, record)


def _print_curve(cfg: Any, record: Any) -> None:
    run = record.metadata.get("run", {}).get("run_name")
    if run:
        curve = cfg.paths.runs / run / CURVE_PNG
        if curve.is_file():
            console.print(f"loss curve: {curve} (+ {CURVE_CSV})", soft_wrap=True)


def _print_method_record(record: Any, method: str) -> None:
    """The registered entry of a non-SFT method: its held-out metric before -> after."""
    from rich.table import Table

    spec = METHODS[method]
    metrics = record.metadata.get("metrics", {})
    metric = spec.metric
    table = Table(title=f"trained {spec.kind.replace('_', ' ')}")
    for column in ("id", "version", "method", "parent", f"held-out {metric}", "steps", "signed"):
        table.add_column(column)
    parent = record.metadata.get("parent") or {}
    table.add_row(
        record.adapter_id,
        f"v{record.version}",
        method,
        f"{parent['adapter_id']} v{parent['version']}" if parent else "-",
        f"{metrics.get(f'{metric}_before', float('nan')):.4f} -> "
        f"{metrics.get(f'{metric}_after', float('nan')):.4f}",
        str(metrics.get("steps", "")),
        "[green]yes[/]" if record.signed else f"[red]no[/] ({record.problem})",
    )
    console.print(table)
    console.print(
        f"{metrics.get('seconds', 0):.1f} s on Ray Train; stored at {record.path}", soft_wrap=True
    )
