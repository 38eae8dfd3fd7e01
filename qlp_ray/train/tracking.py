"""MLflow tracking of training runs and Tune trials (``tracking.*``).

Every ``qlp train`` run and every ``qlp tune`` trial is an MLflow run of the experiment
``tracking.experiment``: the driver creates it with the training config as params; a Ray
Train ``UserCallback`` (:class:`MlflowReportCallback`, run by the Ray Train controller)
logs every ``ray.train.report`` of rank 0 at its step, so the loss, held-out loss and
learning rate arrive as per-step series while the run trains; after registration the
adapter id and version become tags (:func:`tag_run`). A Tune study is a parent run whose
trials are child runs (``mlflow.parentRunId``).

The default store is ``sqlite:///<home>/mlflow.db`` (MLflow 3.18 refuses a plain ``file:``
store unless ``MLFLOW_ALLOW_FILE_STORE=true``); artifacts go to ``<home>/mlruns``. Tracking
never fails a training run: an unreachable store is logged as a warning.
"""

from __future__ import annotations

import logging
import math
from typing import Any

from qlp_ray.core.config import QLPConfig

logger = logging.getLogger(__name__)

MAX_PARAM_LEN = 6000  # MLflow's limit of a param value


def tracking_uri(cfg: QLPConfig) -> str | None:
    """The MLflow tracking URI of ``cfg``, or None when tracking is off or mlflow is missing."""
    if not cfg.tracking.enabled:
        return None
    try:
        import mlflow  # noqa: F401
    except ImportError:
        logger.warning("tracking.enabled, but mlflow is missing: pip install 'qlp_ray[tracking]'")
        return None
    if cfg.tracking.mlflow_uri:
        return cfg.tracking.mlflow_uri
    cfg.paths.root.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{cfg.paths.root / 'mlflow.db'}"


def _client(uri: str) -> Any:
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=uri)


def _experiment_id(cfg: QLPConfig, client: Any) -> str:
    name = cfg.tracking.experiment
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    location = None
    if not cfg.tracking.mlflow_uri:  # the default store: artifacts beside it, under <home>
        location = (cfg.paths.root / "mlruns").as_uri()
    try:
        return client.create_experiment(name, artifact_location=location)
    except Exception:  # created meanwhile by another process
        exp = client.get_experiment_by_name(name)
        if exp is None:
            raise
        return exp.experiment_id


def flat_params(data: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested config -> ``{"a.b": "value"}`` strings, as MLflow params."""
    out: dict[str, str] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flat_params(value, f"{name}."))
        else:
            out[name] = str(value)[:MAX_PARAM_LEN]
    return out


def scalar_metrics(metrics: dict[str, Any]) -> dict[str, float]:
    return {
        k: float(v)
        for k, v in metrics.items()
        if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(float(v))
    }


def start_run(
    cfg: QLPConfig,
    run_name: str,
    params: dict[str, Any],
    *,
    tags: dict[str, str] | None = None,
    parent_run_id: str | None = None,
) -> tuple[str, str] | None:
    """Create an MLflow run with ``params`` (flattened); return ``(uri, run_id)``, or None
    when tracking is off or the store cannot be reached."""
    from mlflow.entities import Param

    uri = tracking_uri(cfg)
    if uri is None:
        return None
    try:
        client = _client(uri)
        all_tags = {"qlp.run_name": run_name, **(tags or {})}
        if parent_run_id:
            all_tags["mlflow.parentRunId"] = parent_run_id
        run = client.create_run(_experiment_id(cfg, client), run_name=run_name, tags=all_tags)
        items = [Param(k, v) for k, v in flat_params(params).items()]
        for i in range(0, len(items), 100):  # MLflow takes at most 100 params per batch
            client.log_batch(run.info.run_id, params=items[i : i + 100])
    except Exception as exc:  # tracking never fails a training run
        logger.warning("MLflow run %s not created at %s: %s", run_name, uri, exc)
        return None
    logger.info("MLflow run %s (%s) at %s", run_name, run.info.run_id, uri)
    return uri, run.info.run_id


def log_metrics(uri: str, run_id: str, metrics: dict[str, Any], step: int) -> None:
    """Log the scalar ``metrics`` at ``step``."""
    import time

    from mlflow.entities import Metric

    values = scalar_metrics(metrics)
    if not values:
        return
    now = int(time.time() * 1000)
    try:
        _client(uri).log_batch(run_id, metrics=[Metric(k, v, now, step) for k, v in values.items()])
    except Exception as exc:
        logger.warning("MLflow metrics of run %s not logged: %s", run_id, exc)


def log_metric_steps(uri: str, run_id: str, points: list[tuple[int, dict[str, Any]]]) -> None:
    """Log several steps' scalar metrics in one batch (a worker that buffers its steps)."""
    import time

    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    items = [Metric(k, v, now, step) for step, m in points for k, v in scalar_metrics(m).items()]
    try:
        client = _client(uri)
        for i in range(0, len(items), 1000):  # MLflow takes at most 1000 metrics per batch
            client.log_batch(run_id, metrics=items[i : i + 1000])
    except Exception as exc:
        logger.warning("MLflow metrics of run %s not logged: %s", run_id, exc)


def finish_run(
    run: tuple[str, str] | None,
    *,
    metrics: dict[str, Any] | None = None,
    tags: dict[str, Any] | None = None,
    failed: bool = False,
    stopped: bool = False,
) -> None:
    """Log the run's final ``metrics`` (at their ``steps``) and ``tags``; mark it FINISHED,
    FAILED, or KILLED when a scheduler (ASHA) ``stopped`` it early."""
    if run is None:
        return
    uri, run_id = run
    if metrics:
        log_metrics(uri, run_id, metrics, int(metrics.get("steps", 0) or 0))
    try:
        client = _client(uri)
        for key, value in (tags or {}).items():
            client.set_tag(run_id, key, str(value))
        if stopped:
            client.set_tag(run_id, "qlp.stopped_early", "true")
        status = "KILLED" if stopped else "FAILED" if failed else "FINISHED"
        client.set_terminated(run_id, status=status)
    except Exception as exc:
        logger.warning("MLflow run %s not finished: %s", run_id, exc)


def tag_run(run: tuple[str, str] | None, tags: dict[str, Any]) -> None:
    """Set ``tags`` on a (finished) run, e.g. the registered adapter's id and version."""
    if run is None:
        return
    uri, run_id = run
    try:
        client = _client(uri)
        for key, value in tags.items():
            client.set_tag(run_id, key, str(value))
    except Exception as exc:
        logger.warning("MLflow tags of run %s not set: %s", run_id, exc)


def close_children(
    parent: tuple[str, str] | None,
    best_trial_id: str | None,
    stopped_trial_ids: set[str] | frozenset[str] = frozenset(),
) -> tuple[str, str] | None:
    """After a Tune search: mark the child runs of trials that ASHA stopped as KILLED (still
    RUNNING, or ended by the stop itself: Tune listed them without an error in
    ``stopped_trial_ids``); return the child run of ``best_trial_id``."""
    if parent is None:
        return None
    uri, parent_id = parent
    best = None
    try:
        client = _client(uri)
        experiment = client.get_run(parent_id).info.experiment_id
        children = client.search_runs(
            [experiment], filter_string=f"tags.mlflow.parentRunId = '{parent_id}'"
        )
        for child in children:
            trial_id = child.data.tags.get("qlp.trial_id")
            stopped = trial_id in stopped_trial_ids and child.info.status != "FINISHED"
            if child.info.status == "RUNNING" or stopped:
                client.set_tag(child.info.run_id, "qlp.stopped_early", "true")
                client.set_terminated(child.info.run_id, status="KILLED")
            if best_trial_id and trial_id == best_trial_id:
                best = (uri, child.info.run_id)
    except Exception as exc:
        logger.warning("MLflow child runs of %s not closed: %s", parent_id, exc)
    return best


def report_callback(run: tuple[str, str] | None) -> list[Any]:
    """``[MlflowReportCallback]`` for a Ray Train ``RunConfig(callbacks=...)``; [] when
    ``run`` is None."""
    if run is None:
        return []
    from ray.train import UserCallback

    class MlflowReportCallback(UserCallback):
        """Logs rank 0's metrics of every ``ray.train.report`` at its ``step``."""

        def __init__(self, uri: str, run_id: str) -> None:
            self.uri, self.run_id = uri, run_id

        def after_report(self, run_context, metrics, checkpoint) -> None:
            first = dict(metrics[0]) if metrics else {}
            step = first.pop("step", None)
            if isinstance(step, int | float):
                log_metrics(self.uri, self.run_id, first, int(step))

    return [MlflowReportCallback(*run)]


__all__ = [
    "close_children",
    "finish_run",
    "flat_params",
    "log_metric_steps",
    "log_metrics",
    "report_callback",
    "scalar_metrics",
    "start_run",
    "tag_run",
    "tracking_uri",
]
