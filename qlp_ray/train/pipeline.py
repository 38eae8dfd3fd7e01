"""Train → centroid → sign and register: one adapter from a capsule file to a registry entry."""

from __future__ import annotations

import logging
import shutil
from collections.abc import Callable
from pathlib import Path

from qlp_ray.core.config import QLPConfig
from qlp_ray.data.capsules import file_sha256
from qlp_ray.models.base import base_model_id
from qlp_ray.registry import AdapterRecord, Registry, validate_adapter_id
from qlp_ray.route.centroid import compute_centroid
from qlp_ray.route.embeddings import get_embedder

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


def training_centroid(cfg: QLPConfig, texts: list[str]) -> list[float]:
    """Unit-length mean embedding of the training prompts (what the router compares with)."""

    embedder = get_embedder(cfg.router.embedding_model)
    return [float(x) for x in compute_centroid(embedder.encode(texts))]


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
) -> AdapterRecord:
    """Train an adapter on Ray Train, then sign and register it as the next version.

    ``qlp.json`` of the new version holds ``method``, ``data_hash`` (SHA-256 of the
    training file), ``metrics``, ``train_config``, the routing ``centroid`` and, for
    AdaLoRA, the final ``rank_pattern``. ``progress`` receives short stage messages.
    """
    from qlp_ray.train.ray_train import (  # lazy: loads peft, transformers
        effective_train_config,
        train_adapter,
    )

    def say(message: str) -> None:
        logger.info("%s", message)
        if progress is not None:
            progress(message)

    adapter_id = validate_adapter_id(adapter_id or domain)
    validate_adapter_id(domain, "domain")
    train_cfg = effective_train_config(cfg, method=method, workers=workers, steps=steps)
    base_id = base_model_id(cfg)

    say(f"training {adapter_id} ({train_cfg.method}, {train_cfg.steps} steps) on Ray Train")
    result = train_adapter(
        cfg,
        domain=domain,
        data_path=data_path,
        heldout_path=heldout_path,
        method=train_cfg.method,
        workers=train_cfg.workers,
        steps=train_cfg.steps,
    )
    say(
        f"held-out loss {result.metrics['eval_loss_before']:.4f} -> "
        f"{result.metrics['eval_loss_after']:.4f}; computing routing centroid"
    )
    centroid = training_centroid(cfg, result.routing_texts)

    metadata = {
        "method": train_cfg.method,
        "data_hash": file_sha256(data_path),
        "data_file": Path(data_path).name,
        "metrics": {k: result.metrics[k] for k in METRIC_KEYS},
        "train_config": train_cfg.model_dump(mode="json"),
        "run": {
            k: result.metrics[k]
            for k in ("run_name", "run_seconds", "workers", "train_records", "heldout_records")
        },
        "centroid": centroid,
    }
    if heldout_path is not None:
        metadata["heldout_hash"] = file_sha256(heldout_path)
    if train_cfg.method == "adalora":
        metadata["rank_pattern"] = result.metrics.get("rank_pattern") or {}

    say(f"signing and registering {adapter_id}")
    record = Registry(cfg).register(
        result.adapter_dir,
        adapter_id=adapter_id,
        domain=domain,
        base_model=base_id,
        metadata=metadata,
    )
    if not keep_run_adapter:
        shutil.rmtree(result.adapter_dir, ignore_errors=True)
    say(f"registered {record.adapter_id} v{record.version} (signed={record.signed})")
    return record


__all__ = ["METRIC_KEYS", "train_and_register", "training_centroid"]
