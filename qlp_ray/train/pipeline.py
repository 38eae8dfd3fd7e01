"""The one train → evaluate → register pipeline: from training data to a signed registry entry.

Every way an adapter enters the registry runs :func:`run_pipeline`, with hooks for what
differs between the callers:

- ``qlp train`` (and so the REST fine-tuning jobs, which run it as a Ray job) and the demo:
  :func:`train_and_register` — Ray Train SFT with held-out loss measured before and after,
  routing centroid, lineage metadata, registered as current;
- ``qlp tune --register``: the best trial's adapter, already trained and evaluated by Ray
  Tune, registered with its tuning metadata;
- the improve loop: a candidate trained by :func:`train_with_lineage`, judged against
  production on held-out data (``evaluate``), registered (not as current while an
  experiment runs) with its verdict, idempotently (``registered``).

Training is :func:`train_with_lineage`; signing and registration is :func:`register_adapter`.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from qlp_ray.core.config import QLPConfig
from qlp_ray.core.errors import TrainingError
from qlp_ray.data.capsules import file_sha256
from qlp_ray.models.base import base_model_id
from qlp_ray.registry import AdapterRecord, Registry, validate_adapter_id
from qlp_ray.route.centroid import compute_centroid
from qlp_ray.route.embeddings import get_embedder
from qlp_ray.train import tracking

logger = logging.getLogger(__name__)

ProgressFn = Callable[[str], None]
METRIC_KEYS = (
    "eval_loss_before",
    "eval_loss_after",
    "train_loss",
    "steps",
    "tokens_per_s",
    "seconds",
)
RUN_KEYS = ("run_name", "run_seconds", "workers", "train_records", "heldout_records")


@dataclass
class TrainedAdapter:
    """An adapter directory ready to register, what its run measured, and its lineage
    metadata (what ``qlp.json`` of the registered version records)."""

    adapter_dir: Path
    metrics: dict[str, Any] = field(default_factory=dict)
    metadata: dict[str, Any] = field(default_factory=dict)
    tracking_run: tuple[str, str] | None = None  # MLflow (URI, run id): tagged when registered


class Verdict(Protocol):
    """A held-out verdict: register the adapter or not, and why."""

    register: bool
    reason: str


@dataclass
class PipelineOutcome:
    """What one pass of the pipeline did: ``record`` is None when the verdict rejected it."""

    trained: TrainedAdapter
    verdict: Any = None  # a Verdict, or None when the training run's own held-out loss is the check
    record: AdapterRecord | None = None


def _say(progress: ProgressFn | None, message: str) -> None:
    logger.info("%s", message)
    if progress is not None:
        progress(message)


def training_centroid(cfg: QLPConfig, texts: list[str]) -> list[float]:
    """Unit-length mean embedding of the training prompts (what the router compares with)."""

    embedder = get_embedder(cfg.router.embedding_model)
    return [float(x) for x in compute_centroid(embedder.encode(texts))]


def train_with_lineage(
    cfg: QLPConfig,
    *,
    domain: str,
    data_path: str | Path,
    heldout_path: str | Path | None = None,
    method: str | None = None,
    workers: int | None = None,
    steps: int | None = None,
    progress: ProgressFn | None = None,
    label: str | None = None,
    overrides: dict[str, Any] | None = None,
    run_name: str | None = None,
    init: str | None = None,
) -> TrainedAdapter:
    """Train on Ray Train (held-out loss measured before and after training), then compute
    the routing centroid of the training prompts.

    The metadata holds ``method``, ``data_hash`` (SHA-256 of the training file),
    ``data_file``, ``metrics``, ``train_config``, ``run``, the ``centroid``, the
    ``heldout_hash`` of a held-out file and, for AdaLoRA, the final ``rank_pattern``.
    ``label`` names the adapter in progress messages (default: the domain); ``overrides``
    and ``run_name`` go to :func:`~qlp_ray.train.ray_train.train_adapter`. ``init``
    (``base``, ``meta`` or a meta-init ``id@N``): the LoRA the run starts from
    (:mod:`qlp_ray.train.meta_entry`); the lineage records ``init`` and the ``meta_init``.
    """
    from qlp_ray.train.meta_entry import init_for_run
    from qlp_ray.train.ray_train import (  # lazy: loads peft, transformers
        effective_train_config,
        train_adapter,
    )

    train_cfg = effective_train_config(
        cfg, method=method, workers=workers, steps=steps, overrides=overrides
    )
    what = label or domain
    init_ref = init_for_run(cfg, init, train_cfg, domain, progress)
    _say(progress, f"training {what} ({train_cfg.method}, {train_cfg.steps} steps) on Ray Train")
    result = train_adapter(
        cfg,
        domain=domain,
        data_path=data_path,
        heldout_path=heldout_path,
        method=train_cfg.method,
        workers=train_cfg.workers,
        steps=train_cfg.steps,
        overrides=overrides,
        run_name=run_name,
        init=init_ref.worker_config() if init_ref else None,
    )
    _say(
        progress,
        f"held-out loss {result.metrics['eval_loss_before']:.4f} -> "
        f"{result.metrics['eval_loss_after']:.4f}; computing routing centroid",
    )
    metadata: dict[str, Any] = {
        "method": train_cfg.method,
        "data_hash": file_sha256(data_path),
        "data_file": Path(data_path).name,
        "metrics": {k: result.metrics[k] for k in METRIC_KEYS},
        "train_config": train_cfg.model_dump(mode="json"),
        "run": {k: result.metrics[k] for k in RUN_KEYS},
        "centroid": training_centroid(cfg, result.routing_texts),
    }
    if heldout_path is not None:
        metadata["heldout_hash"] = file_sha256(heldout_path)
    if train_cfg.method == "adalora":
        metadata["rank_pattern"] = result.metrics.get("rank_pattern") or {}
    metadata["init"] = "meta" if init_ref else "base"
    if init_ref is not None:
        state = result.metrics.get("init_state_sha256")  # the worker's weights after loading
        metadata["meta_init"] = {**init_ref.lineage(), "requested": init, "state_sha256": state}
    if result.tracking_run is not None:
        metadata["mlflow_run_id"] = result.tracking_run[1]
    return TrainedAdapter(
        Path(result.adapter_dir), dict(result.metrics), metadata, result.tracking_run
    )


def register_adapter(
    cfg: QLPConfig,
    adapter_dir: str | Path,
    *,
    adapter_id: str,
    domain: str,
    metadata: dict[str, Any],
    make_current: bool = True,
    registry: Registry | None = None,
    base_model: str | None = None,
    progress: ProgressFn | None = None,
) -> AdapterRecord:
    """Sign and register ``adapter_dir`` as the next version of ``adapter_id`` on the
    configured base model (``base_model`` overrides it)."""
    _say(progress, f"signing and registering {adapter_id}")
    record = (registry or Registry(cfg)).register(
        adapter_dir,
        adapter_id=adapter_id,
        domain=domain,
        base_model=base_model or base_model_id(cfg),
        metadata=metadata,
        make_current=make_current,
    )
    _say(progress, f"registered {record.adapter_id} v{record.version} (signed={record.signed})")
    return record


def run_pipeline(
    cfg: QLPConfig,
    *,
    domain: str,
    train: Callable[[], TrainedAdapter],
    adapter_id: str | None = None,
    evaluate: Callable[[TrainedAdapter], Verdict] | None = None,
    metadata: Callable[[TrainedAdapter, Any], dict[str, Any]] | None = None,
    registered: Callable[[], AdapterRecord | None] | None = None,
    make_current: bool = True,
    registry: Registry | None = None,
    base_model: str | None = None,
    progress: ProgressFn | None = None,
) -> PipelineOutcome:
    """Train → evaluate on held-out data → sign and register, with a hook per step.

    ``train`` returns the adapter (trained now, reused, or trained earlier by Ray Tune).
    ``evaluate`` is an extra held-out check whose ``register`` flag gates registration
    (default: none beyond the training run's own held-out loss). ``metadata`` builds
    the version's metadata from the adapter and the verdict (default: the adapter's
    lineage). ``registered`` finds a version an earlier, interrupted pass already
    registered, so a rerun does not register twice.
    """
    adapter_id = validate_adapter_id(adapter_id or domain)
    validate_adapter_id(domain, "domain")
    base_model = base_model or base_model_id(cfg)  # a bad base model fails before training
    trained = train()
    verdict = evaluate(trained) if evaluate is not None else None
    if verdict is not None and not verdict.register:
        logger.info("%s: not registered: %s", adapter_id, verdict.reason)
        return PipelineOutcome(trained, verdict, None)
    record = registered() if registered is not None else None
    if record is None:
        record = register_adapter(
            cfg,
            trained.adapter_dir,
            adapter_id=adapter_id,
            domain=domain,
            metadata=metadata(trained, verdict) if metadata is not None else trained.metadata,
            make_current=make_current,
            registry=registry,
            base_model=base_model,
            progress=progress,
        )
    tracking.tag_run(trained.tracking_run, {"qlp.adapter_id": record.adapter_id,
                                            "qlp.adapter_version": record.version,
                                            "qlp.adapter_signed": record.signed})  # fmt: skip
    return PipelineOutcome(trained, verdict, record)


def train_and_register(
    cfg: QLPConfig,
    *,
    domain: str,
    data_path: str | Path,
    heldout_path: str | Path | None = None,
    adapter_id: str | None = None,
    method: str | None = None,
    workers: int | None = None,
    steps: int | None = None,
    progress: ProgressFn | None = None,
    keep_run_adapter: bool = False,
    overrides: dict[str, Any] | None = None,
    run_name: str | None = None,
    init: str | None = None,
) -> AdapterRecord:
    """Train an adapter on Ray Train, then sign and register it as the next version.

    ``qlp.json`` of the new version holds the lineage of :func:`train_with_lineage`.
    ``progress`` receives short stage messages; ``overrides`` (more ``train.*`` fields) and
    ``run_name`` and ``init`` go to :func:`train_with_lineage`.
    """
    adapter_id = validate_adapter_id(adapter_id or domain)
    validate_adapter_id(domain, "domain")
    outcome = run_pipeline(
        cfg,
        domain=domain,
        adapter_id=adapter_id,
        train=lambda: train_with_lineage(
            cfg,
            domain=domain,
            data_path=data_path,
            heldout_path=heldout_path,
            method=method,
            workers=workers,
            steps=steps,
            progress=progress,
            label=adapter_id,
            overrides=overrides,
            run_name=run_name,
            init=init,
        ),
        progress=progress,
    )
    if not keep_run_adapter:
        shutil.rmtree(outcome.trained.adapter_dir, ignore_errors=True)
    if outcome.record is None:  # cannot happen without an evaluate hook
        raise TrainingError(f"{adapter_id} was trained but not registered")
    return outcome.record


__all__ = [
    "METRIC_KEYS",
    "PipelineOutcome",
    "TrainedAdapter",
    "Verdict",
    "register_adapter",
    "run_pipeline",
    "train_and_register",
    "train_with_lineage",
    "training_centroid",
]
