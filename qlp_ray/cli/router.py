"""``qlp router``: train the learned router and evaluate both routing modes."""

from __future__ import annotations

import json
import os
from contextlib import contextmanager
from pathlib import Path

import typer

from qlp_ray.cli.common import batch_encoder, console, fail, get_config
from qlp_ray.core.errors import QLPError
from qlp_ray.route.embeddings import embedding_cache_dir
from qlp_ray.route.evaluation import (
    LearnedOptions,
    cached_encoder,
    evaluate_modes,
    load_routing_data,
    train_learned,
)
from qlp_ray.route.report import write_routing_report

app = typer.Typer(help="Skill-aware routing: train and evaluate the router.", no_args_is_help=True)


def _cached_encoder(cfg):
    """Embedding function with an on-disk cache (see ``embedding_cache_dir``); the texts
    it has not seen are embedded per ``router.offload`` (``common.batch_encoder``)."""

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    model = cfg.router.embedding_model
    return cached_encoder(model, embedding_cache_dir(cfg.paths.root), batch_encoder(cfg))


def _options(cfg, folds_seed: int = 0):

    r = cfg.router
    return LearnedOptions(
        use_priors=r.use_priors,
        use_samples=r.use_samples,
        target_accuracy=r.target_accuracy,
        finetune=r.finetune_embedder,
        head=r.learned_head,
        title_samples=r.title_samples,
        finetune_objective=r.finetune_objective,
        finetune_group_weight=r.finetune_group_weight,
        supcon_steps=r.finetune_steps,
        seed=folds_seed,
    )


@contextmanager
def _fit_progress(console):
    """A progress bar over the embedder fine-tunes of ``train_learned``; yields its callback."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
               TimeElapsedColumn(), TimeRemainingColumn())  # fmt: skip
    with Progress(*columns, console=console, transient=False) as bar:
        task = bar.add_task("fine-tuning the embedder", total=None)

        def update(fit: int, fits: int, step: int, steps: int) -> None:
            label = "final fit" if fit == fits else f"calibration fold {fit}/{fits - 1}"
            bar.update(task, description=f"fine-tune {fit}/{fits} ({label})",
                       total=fits * steps, completed=(fit - 1) * steps + step)  # fmt: skip

        yield update


@app.command("train")
def train(
    data: Path = typer.Option(..., "--data", help="JSONL of {text, domain[, source]} rows."),
    out: Path | None = typer.Option(
        None, "--out", help="Output dir (default: router.learned_dir)."
    ),
) -> None:
    """Train the learned router (tuned embedder + gating network + lexical model), save it."""

    cfg = get_config()
    try:
        examples = load_routing_data(data)
        encode = _cached_encoder(cfg)
        with _fit_progress(console) as progress:
            router = train_learned(
                examples, encode, _options(cfg), cfg.router.embedding_model,
                progress=progress,
            )  # fmt: skip
        path = router.save(out or cfg.router.learned_path(cfg.paths.root))
        report = _training_report(router, examples, encode, Path(path))
    except QLPError as exc:
        fail(str(exc))
        return
    m = router.meta
    embedder = "fine-tuned, saved with the router" if router.tuned_embedder else m.embedding_model
    console.print(
        f"trained learned router on {len(examples)} rows (+{m.extra['n_extra']} prior/sample "
        f"rows), domains {', '.join(m.labels)}\n"
        f"calibrated temperature {m.temperature:.3f}, threshold {m.threshold:.3f} "
        f"(target accuracy above it: {m.extra['target_accuracy']})\n"
        f"embedder: {embedder}\nsaved to {path}\nreport with the confusion matrix: {report}"
    )


def _training_report(router, examples, encode, saved: Path) -> Path:
    """``report.html`` + ``confusion.png`` of the router on the rows it trained on (an
    in-sample figure; ``qlp router eval`` gives the held-out accuracy)."""
    texts = [e.text for e in examples]
    tuned = router.tuned_embedder
    x = tuned.encode(texts) if tuned is not None else encode(texts)
    predicted = [router.labels[i] for i in router.probabilities(x, texts).argmax(axis=1)]
    truth = [e.domain for e in examples]
    m = router.meta
    return write_routing_report(
        (saved if saved.is_dir() else saved.parent) / "report",
        sorted(set(router.labels) | set(truth)),
        truth,
        predicted,
        title="learned router on its training rows (in-sample)",
        facts={
            "rows": len(examples),
            "temperature": round(m.temperature, 4),
            "threshold": round(m.threshold, 4),
            "embedding model": m.embedding_model,
            "fine-tuned embedder": tuned is not None,
        },  # fmt: skip
    )


@app.command("eval")
def evaluate(
    data: Path = typer.Option(..., "--data", help="JSONL of {text, domain, source} rows."),
    as_json: bool = typer.Option(False, "--json", help="One JSON object per mode."),
    folds: int | None = typer.Option(None, "--folds", help="Grouped folds (default: config)."),
) -> None:
    """Repository-grouped k-fold accuracy, macro-F1 and coverage of both routing modes."""
    from rich.table import Table

    cfg = get_config()
    try:
        results = evaluate_modes(
            load_routing_data(data),
            _cached_encoder(cfg),
            folds=folds or cfg.router.eval_folds,
            centroid_threshold=cfg.router.threshold,
            opts=_options(cfg),
            embedding_model=cfg.router.embedding_model,
        )
    except QLPError as exc:
        fail(str(exc))
        return
    keys = ("mode", "accuracy", "macro_f1", "coverage", "accuracy_above_threshold")
    if as_json:
        for r in results:
            typer.echo(json.dumps({k: r[k] for k in keys} | {"threshold": r["threshold"]}))
        return
    table = Table(
        title=f"routing on {data.name}: {results[0]['n']} rows, "
        f"{folds or cfg.router.eval_folds} repository-grouped folds"
    )
    for col in (*keys, "threshold"):
        table.add_column(col)
    for r in results:
        table.add_row(r["mode"], *(f"{r[k]:.3f}" for k in (*keys[1:], "threshold")))
    console.print(table)
