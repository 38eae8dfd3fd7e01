"""The real engines behind the orchestrator's protocols, and how to assemble them.

- trainer: an incremental adapter on Ray Train plus the routing centroid of its training
  prompts (``qlp_ray.train.pipeline.train_with_lineage``, SFT, the configured small rank);
- evaluator: held-out completion perplexity (:mod:`qlp_ray.improve.heldout`);
- splitter: none yet (the Serve app has no experiment API here), so a candidate that
  beats production on held-out data by the margin is promoted directly.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from qlp_ray.core.runtime import connect_existing, ensure_ray
from qlp_ray.improve.heldout import CompletionPerplexityEvaluator
from qlp_ray.improve.orchestrator import Orchestrator
from qlp_ray.models.base import base_model_id
from qlp_ray.registry.store import Registry
from qlp_ray.store.database import FeedbackStore
from qlp_ray.train.pipeline import TrainedAdapter, train_with_lineage

if TYPE_CHECKING:
    from qlp_ray.core.config import QLPConfig

logger = logging.getLogger(__name__)


def join_or_start_ray(cfg: QLPConfig) -> None:
    """Join the running cluster (``RAY_ADDRESS`` or the demo's local one), else start an
    in-process local Ray for the training runs."""
    if not connect_existing(cfg):
        ensure_ray(cfg, persistent=False)


class RayTrainCandidateTrainer:
    """Trains a candidate adapter for a domain on Ray Train (the pipeline's training step)."""

    def __init__(self, cfg: QLPConfig) -> None:
        self.cfg = cfg

    def train(self, domain: str, train_path: Path, heldout_path: Path) -> TrainedAdapter:
        join_or_start_ray(self.cfg)
        trained = train_with_lineage(
            self.cfg, domain=domain, data_path=train_path, heldout_path=heldout_path
        )
        # The candidate's metadata is its routing centroid; the orchestrator adds its verdict.
        metrics = {k: float(v) for k, v in trained.metrics.items() if isinstance(v, int | float)}
        meta = {"centroid": trained.metadata["centroid"]}
        return TrainedAdapter(trained.adapter_dir, metrics, meta)


def build_orchestrator(
    cfg: QLPConfig, *, progress: Callable[[str], None] | None = None
) -> Orchestrator:
    """An orchestrator on the configured store and registry with the real engines."""

    return Orchestrator(
        cfg,
        FeedbackStore.from_config(cfg),
        Registry(cfg),
        RayTrainCandidateTrainer(cfg),
        CompletionPerplexityEvaluator(cfg),
        splitter=None,
        base_model=base_model_id(cfg),
        progress=progress,
    )
