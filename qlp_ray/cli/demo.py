"""``qlp demo``: train → sign → serve → route, end to end on the built-in model."""

from __future__ import annotations

import json
import time
from pathlib import Path

import typer
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from qlp_ray.cli.common import console, fail, get_config
from qlp_ray.cli.demo_loop import (
    check_summary,
    send_heldout_prompts,
    summarize,
    train_domain_adapters,
)
from qlp_ray.core.runtime import ensure_ray
from qlp_ray.models.base import base_model_id
from qlp_ray.models.tiny import build_tiny_model
from qlp_ray.registry.signing import init_keys

app = typer.Typer()


@app.command()
def demo(
    summary_json: Path | None = typer.Option(None, help="Write the summary JSON here."),
    keep_serving: bool = typer.Option(False, help="Leave the Serve app running afterwards."),
    steps: int | None = typer.Option(None, help="Training steps per adapter (default: config)."),
    rows: int = typer.Option(3, help="Table rows shown per domain (all are sent)."),
) -> None:
    """Build the tiny model, train one adapter per domain, sign, serve, route held-out prompts."""
    from qlp_ray.serve.app import deploy, shutdown  # lazy: loads ray

    cfg = get_config()
    if steps is not None:
        cfg.demo.steps = steps
    t_start = time.perf_counter()
    console.rule("[bold]qlp demo")
    console.print(f"home: {cfg.paths.root}   base model: {cfg.model.base_model}")

    # 1. base model
    with Progress(
        TextColumn("[bold blue]{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total} loss {task.fields[loss]}"),
        TimeElapsedColumn(),
        console=console,
    ) as progress:
        task = progress.add_task(
            "pre-training tiny-llama", total=cfg.model.tiny.pretrain_steps, loss="-"
        )

        def on_step(step: int, total: int, loss: float) -> None:
            progress.update(task, completed=step, loss=f"{loss:.3f}")

        model_dir = build_tiny_model(cfg, progress=on_step)
        progress.update(task, completed=cfg.model.tiny.pretrain_steps)
    console.print(f"base model [green]{base_model_id(cfg)}[/] at {model_dir}")

    # 2. signing key
    if not (cfg.paths.keys / "signing_key.pem").exists():
        info = init_keys(cfg.paths.keys)
        console.print(f"created signing key {info.key_id}")

    # 3. Ray + training
    ensure_ray(cfg, persistent=keep_serving)
    adapters = []
    with console.status("training adapters on Ray Train ...") as status:

        def on_done(domain: str, a) -> None:
            adapters.append(a)
            console.print(
                f"  [green]✓[/] {a.id} v{a.version}: eval loss "
                f"{a.eval_loss_before:.3f} → {a.eval_loss_after:.3f}  signed={a.signed}"
            )
            status.update(
                f"training adapters on Ray Train ({len(adapters)}/{len(cfg.demo.domains)}) ..."
            )

        train_domain_adapters(cfg, on_done=on_done)

    # 4. serve + requests
    with console.status("deploying the Serve application ..."):
        url = deploy(cfg)
    console.print(f"serving on [bold]{url}[/]")
    shown: dict[str, int] = {}
    table = Table(title="held-out prompts through model=auto")
    for col in ("prompt", "expected", "routed", "conf", "adapter", "ms"):
        table.add_column(col)

    def on_result(r) -> None:
        if shown.get(r.expected_domain, 0) >= rows:
            return
        shown[r.expected_domain] = shown.get(r.expected_domain, 0) + 1
        ok = r.routed_domain == r.expected_domain
        table.add_row(
            r.prompt[:60],
            r.expected_domain,
            f"[{'green' if ok else 'red'}]{r.routed_domain or '(fallback)'}[/]",
            f"{r.confidence:.2f}" if r.confidence is not None else "-",
            r.adapter or "base",
            f"{r.latency_ms:.0f}" if r.ok else f"[red]{r.error}[/]",
        )

    try:
        with console.status("sending held-out prompts ..."):
            results = send_heldout_prompts(cfg, url, on_result=on_result)
    finally:
        if not keep_serving:
            shutdown(cfg)
    console.print(table)

    summary = summarize(adapters, results)
    summary["seconds"] = round(time.perf_counter() - t_start, 1)
    console.print(
        f"requests ok {summary['requests']['ok']}/{summary['requests']['sent']}, "
        f"routing accuracy {summary['routing_accuracy']:.3f}, "
        f"latency p50 {summary['latency_ms']['p50']} ms p95 {summary['latency_ms']['p95']} ms, "
        f"{summary['seconds']} s in all"
    )
    if summary_json is not None:
        summary_json.parent.mkdir(parents=True, exist_ok=True)
        summary_json.write_text(json.dumps(summary, indent=2))
        console.print(f"summary written to {summary_json}")
    if keep_serving:
        console.print(f"still serving on {url}; stop with [bold]qlp shutdown[/]")
    problems = check_summary(summary)
    if problems:
        fail("; ".join(problems))
    console.print("[bold green]demo passed[/]")
