"""A training run's reported metrics on disk, and its loss curve (CSV + PNG).

Rank 0 of a Ray Train run appends every trainer log line (the training loss every
``logging_steps``, the held-out loss measured before and after training) to a
``metrics.jsonl`` in its own temp dir and its checkpoints; on the driver's node the run's
``<run dir>/metrics.jsonl`` gets the reported lines while it trains and rank 0's file from
the final checkpoint at the end (:mod:`qlp_ray.train.ray_metrics`: rank 0 may be on another
node). The HTTP API reads that file to show a running job's progress, and the driver turns
it into ``loss_curve.csv`` and ``loss_curve.png`` when the run ends. Every method writes it:
SFT and the TRL methods (DPO, GRPO, RLOO, reward, distill) their trainer's log lines, PPO its
per-step stats (``loss`` = the PPO objective, plus ``reward`` and ``kl``, which its curve
shows in a second panel). The file lives under
``paths.runs`` of the job's driver: a gateway shows a job's live metrics when it shares that
directory with the driver (one node, or a shared file system).
"""

from __future__ import annotations

import csv
import json
import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

METRICS_FILE = "metrics.jsonl"
CURVE_CSV = "loss_curve.csv"
CURVE_PNG = "loss_curve.png"


def append_metrics(path: str | Path, record: dict[str, Any]) -> None:
    """Append one log line (``step`` plus scalar metrics) as a JSON line."""
    with Path(path).open("a", encoding="utf-8") as fh:
        fh.write(json.dumps(record, sort_keys=True) + "\n")


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """The log lines written so far; a line still being written (no newline yet) is left out."""
    path = Path(path)
    if not path.is_file():
        return []
    out = []
    text = path.read_text(encoding="utf-8")
    for line in text.splitlines(keepends=True):
        if not line.endswith("\n"):
            break
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            logger.warning("skipping a malformed line of %s", path)
            continue
        if isinstance(record, dict):
            out.append(record)
    return out


def drop_metrics_after(path: str | Path, step: int) -> None:
    """Keep only the log lines up to ``step``: a run resumed from the checkpoint of ``step``
    logs the later steps again."""
    path = Path(path)
    kept = [r for r in read_metrics(path) if not (isinstance(r.get("step"), int | float)
                                                  and r["step"] > step)]  # fmt: skip
    if path.is_file():
        path.write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in kept), "utf-8")


def loss_series(records: list[dict[str, Any]]) -> dict[str, list[dict[str, float]]]:
    """``{"train": [{step, loss}], "heldout": [{step, loss}]}`` from the log lines, in step
    order: ``loss`` is the training loss of a logging window, ``eval_loss`` a held-out pass."""
    series: dict[str, list[dict[str, float]]] = {"train": [], "heldout": []}
    for rec in records:
        step = rec.get("step")
        if not isinstance(step, int | float):
            continue
        for key, name in (("loss", "train"), ("eval_loss", "heldout")):
            value = rec.get(key)
            if isinstance(value, int | float) and math.isfinite(value):
                series[name].append({"step": float(step), "loss": float(value)})
    for points in series.values():
        points.sort(key=lambda p: p["step"])
    return series


def progress_of(records: list[dict[str, Any]], total_steps: int | None) -> dict[str, Any]:
    """Last step reached, its share of ``total_steps``, and the last learning rate."""
    steps = [r["step"] for r in records if isinstance(r.get("step"), int | float)]
    last = int(max(steps)) if steps else 0
    lrs = [r["learning_rate"] for r in records if isinstance(r.get("learning_rate"), int | float)]
    fraction = min(1.0, last / total_steps) if total_steps else None
    return {"step": last, "total_steps": total_steps, "fraction": fraction,
            "learning_rate": lrs[-1] if lrs else None}  # fmt: skip


def metric_series(
    records: list[dict[str, Any]], keys: Sequence[str]
) -> dict[str, list[dict[str, float]]]:
    """``{key: [{step, value}]}`` of the finite values of ``keys`` in the log lines."""
    out: dict[str, list[dict[str, float]]] = {}
    for key in keys:
        points = [
            {"step": float(r["step"]), "value": float(r[key])}
            for r in records
            if isinstance(r.get("step"), int | float)
            and isinstance(r.get(key), int | float)
            and math.isfinite(r[key])
        ]
        if points:
            out[key] = sorted(points, key=lambda p: p["step"])
    return out


def write_loss_curve(
    run_dir: str | Path, title: str = "", extra_keys: Sequence[str] = ()
) -> tuple[Path, Path] | None:
    """``loss_curve.csv`` (split, step, loss) and ``loss_curve.png`` in ``run_dir`` from its
    ``metrics.jsonl``; None when the run reported nothing to plot. ``extra_keys`` (PPO:
    ``reward``, ``kl``) become more rows of the CSV, whose third column is then ``value``,
    and a second panel of the PNG."""
    run_dir = Path(run_dir)
    records = read_metrics(run_dir / METRICS_FILE)
    series = loss_series(records)
    extras = metric_series(records, extra_keys)
    if not series["train"] and not series["heldout"] and not extras:
        logger.warning("no loss reported in %s: no loss curve written", run_dir)
        return None
    csv_path, png_path = run_dir / CURVE_CSV, run_dir / CURVE_PNG
    with csv_path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["split", "step", "value" if extras else "loss"])
        for split, points in series.items():
            writer.writerows([split, int(p["step"]), p["loss"]] for p in points)
        for key, points in extras.items():
            writer.writerows([key, int(p["step"]), p["value"]] for p in points)
    plot_loss_curve(series, png_path, title=title, extras=extras)
    logger.info("loss curve written to %s and %s", csv_path, png_path)
    return csv_path, png_path


def plot_loss_curve(
    series: dict[str, list[dict[str, float]]],
    dest: Path,
    title: str = "",
    extras: dict[str, list[dict[str, float]]] | None = None,
) -> Path:
    """A PNG of the training and held-out loss against the step (and, below it, the
    ``extras`` series: PPO's reward and KL)."""
    import matplotlib

    matplotlib.use("Agg")  # no display: files only
    import matplotlib.pyplot as plt

    if extras:
        fig, (ax, ax2) = plt.subplots(2, 1, figsize=(6.4, 6.0), dpi=100, sharex=True)
        for key, points in extras.items():
            ax2.plot([p["step"] for p in points], [p["value"] for p in points],
                     marker=".", label=key)  # fmt: skip
        ax2.set_xlabel("step")
        ax2.grid(alpha=0.3)
        ax2.legend()
    else:
        fig, ax = plt.subplots(figsize=(6.4, 3.6), dpi=100)
    styles = {"train": ("training loss", "-", "o"), "heldout": ("held-out loss", "--", "s")}
    for split, (label, line, marker) in styles.items():
        points = series.get(split) or []
        if points:
            ax.plot([p["step"] for p in points], [p["loss"] for p in points],
                    linestyle=line, marker=marker, label=label)  # fmt: skip
    if not extras:
        ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title(title or "loss curve")
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend()
    fig.tight_layout()
    fig.savefig(dest)
    plt.close(fig)
    return dest


__all__ = [
    "CURVE_CSV",
    "CURVE_PNG",
    "METRICS_FILE",
    "append_metrics",
    "drop_metrics_after",
    "loss_series",
    "metric_series",
    "plot_loss_curve",
    "progress_of",
    "read_metrics",
    "write_loss_curve",
]
