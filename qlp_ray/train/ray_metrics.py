"""The run's ``metrics.jsonl`` on the driver's node, whichever node rank 0 trains on.

Rank 0 never writes the driver's run directory (it may be on another node:
:mod:`qlp_ray.train.node_files`). Instead

- live: :func:`live_metrics_callback` is a Ray Train ``UserCallback``; it runs in the Ray
  Train controller, which Ray pins to the driver's node, and appends rank 0's reported
  metrics to the driver's ``metrics.jsonl`` (so ``GET /v1/fine-tuning/jobs/{id}/metrics``
  shows a running job: SFT reports every log line, the TRL methods and PPO every checkpoint);
- PPO reports its steps in batches (:func:`step_stats_callback`, which also logs them to
  MLflow from the driver's node);
- final: rank 0 puts its complete ``metrics.jsonl`` in the final checkpoint and
  :func:`metrics_from_checkpoint` writes it over the live one (exact after a resume).
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any

from qlp_ray.train.run_metrics import METRICS_FILE, append_metrics, drop_metrics_after

logger = logging.getLogger(__name__)

SKIPPED_KEYS = ("checkpoint_step", "finished")  # reports that repeat a line or sum the run


def live_metrics_callback(path: str | Path | None) -> list[Any]:
    """``[callback]`` appending rank 0's reports to ``path`` on the driver's node; [] when
    ``path`` is None."""
    if path is None:
        return []
    from ray.train import UserCallback

    class LiveMetrics(UserCallback):
        def __init__(self, path: str) -> None:
            self.path = path
            self.last_step = -1.0
            self.checkpoint_step = 0

        def after_report(self, run_context, metrics, checkpoint) -> None:
            first = dict(metrics[0]) if metrics else {}
            step = first.get("step")
            if not isinstance(step, int | float):
                return
            if step < self.last_step:  # a restarted worker group logs again from its checkpoint
                drop_metrics_after(self.path, self.checkpoint_step)
            if checkpoint is not None:
                self.checkpoint_step = int(step)
            self.last_step = float(step)
            if any(key in first for key in SKIPPED_KEYS):
                return
            try:
                append_metrics(self.path, first)
            except OSError as exc:  # the live view never fails a run
                logger.warning("live metrics not written to %s: %s", self.path, exc)

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    return [LiveMetrics(str(path))]


STEP_STATS = "qlp_step_stats"  # PPO: the [(step, stats)] since the last report


def step_stats_callback(
    path: str | Path | None, tracking_run: tuple[str, str] | None = None
) -> list[Any]:
    """``[callback]`` for a loop that reports its per-step stats in batches (PPO: one
    ``ray.train.report`` per checkpoint, with :data:`STEP_STATS` of rank 0): each batch is
    appended to ``path`` and logged to the MLflow run ``tracking_run`` (``(uri, run_id)``)
    from the controller, on the driver's node (a local MLflow store is the driver's)."""
    if path is None and tracking_run is None:
        return []
    from ray.train import UserCallback

    class StepStats(UserCallback):
        def __init__(self, path: str | None, run: tuple[str, str] | None) -> None:
            self.path, self.run = path, run
            self.last_step = 0

        def after_report(self, run_context, metrics, checkpoint) -> None:
            batch = list((metrics[0] if metrics else {}).get(STEP_STATS) or [])
            if not batch:
                return
            if self.path is not None:
                if batch[0][0] <= self.last_step:  # a restarted group repeats its steps
                    drop_metrics_after(self.path, batch[0][0] - 1)
                for step, stats in batch:
                    append_metrics(self.path, {**stats, "step": step})
            self.last_step = batch[-1][0]
            if self.run is not None:
                from qlp_ray.train.tracking import log_metric_steps

                log_metric_steps(*self.run, batch)

    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    return [StepStats(str(path) if path is not None else None, tracking_run)]


def metrics_from_checkpoint(checkpoint_dir: str | Path, dest: str | Path | None) -> bool:
    """Write rank 0's ``metrics.jsonl`` of the final checkpoint to ``dest``; False when the
    checkpoint holds none (``dest`` keeps the live lines)."""
    src = Path(checkpoint_dir) / METRICS_FILE
    if dest is None or not src.is_file():
        return False
    Path(dest).parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, dest)
    return True


__all__ = ["STEP_STATS", "live_metrics_callback", "metrics_from_checkpoint", "step_stats_callback"]
