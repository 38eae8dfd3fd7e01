"""The real engines behind the orchestrator's protocols, and how to assemble them.

- trainer: an incremental adapter on Ray Train (``qlp_ray.train.ray_train.train_adapter``,
  SFT, the configured small rank) plus the routing centroid of its training prompts;
- evaluator: held-out completion perplexity (:mod:`qlp_ray.improve.heldout`);
- splitter: none yet (the Serve app has no experiment API here), so a candidate that
  beats production on held-out data by the margin is promoted directly.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from qlp_ray.core.errors import TrainingError
from qlp_ray.core.runtime import connect_existing, ensure_ray
from qlp_ray.improve.heldout import CompletionPerplexityEvaluator
from qlp_ray.improve.orchestrator import Orchestrator, TrainedCandidate
from qlp_ray.models.base import base_model_id
from qlp_ray.registry.store import Registry
from qlp_ray.route.centroid import compute_centroid
from qlp_ray.route.embeddings import get_embedder
from qlp_ray.store.database import FeedbackStore

if TYPE_CHECKING:
    from qlp_ray.core.config import QLPConfig

logger = logging.getLogger(__name__)


def join_or_start_ray(cfg: QLPConfig) -> None:
    """Join the running cluster (``RAY_ADDRESS`` or the demo's local one), else start an
    in-process local Ray for the training runs."""
    if not connect_existing():
        ensure_ray(cfg, persistent=False)


class RayTrainCandidateTrainer:
    """Trains a candidate adapter for a domain on Ray Train."""

    def __init__(self, cfg: QLPConfig) -> None:
        self.cfg = cfg

    def train(self, domain: str, train_path: Path, heldout_path: Path) -> TrainedCandidate:
        try:
            from qlp_ray.train.ray_train import train_adapter  # lazy: loads peft, transformers
        except ImportError as exc:  # the training stage is a separate package module
            raise TrainingError(f"Ray Train stage not available: {exc}") from exc

        join_or_start_ray(self.cfg)
        result = train_adapter(
            self.cfg, domain=domain, data_path=train_path, heldout_path=heldout_path
        )
        meta = {}
        if result.routing_texts:
            emb = get_embedder(self.cfg.router.embedding_model).encode(result.routing_texts)
            meta["centroid"] = [float(x) for x in compute_centroid(emb)]
        metrics = {k: float(v) for k, v in result.metrics.items() if isinstance(v, int | float)}
        return TrainedCandidate(Path(result.adapter_dir), metrics, meta)


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
