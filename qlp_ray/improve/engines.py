"""The real engines behind the orchestrator's protocols, and how to assemble them.

- trainer: an incremental adapter on Ray Train plus the routing centroid of its training
  prompts (``qlp_ray.train.pipeline.train_with_lineage``, SFT, the configured small rank),
  or a DPO candidate on Ray Train (:func:`qlp_ray.train.ray_rlhf.train_rlhf_on_ray`)
  continuing the production adapter on preference pairs from feedback;
- evaluator: held-out completion perplexity, and for DPO the held-out preference margin
  (:mod:`qlp_ray.improve.heldout`);
- splitter: a live A/B experiment on the running Serve app through its experiments API
  (:class:`qlp_ray.improve.splitter.ServeExperimentSplitter`), or none with
  ``improve.live_ab: false`` (a candidate that passes the offline gate is promoted).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from qlp_ray.core.runtime import connect_existing, ensure_ray
from qlp_ray.improve.heldout import PreferenceEvaluator
from qlp_ray.improve.orchestrator import Orchestrator
from qlp_ray.improve.splitter import ServeExperimentSplitter
from qlp_ray.models.base import base_model_id
from qlp_ray.registry.store import Registry
from qlp_ray.store.database import FeedbackStore
from qlp_ray.train.dpo import PreferencePair
from qlp_ray.train.node_files import base_model_ref
from qlp_ray.train.pipeline import TrainedAdapter, train_with_lineage, training_centroid

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

    def train_dpo(
        self, domain: str, pairs: list[PreferencePair], parent_dir: Path, run_name: str
    ) -> TrainedAdapter:
        """DPO on Ray Train from the production adapter ``parent_dir`` (which is also the
        frozen reference), plus the routing centroid of the pairs' prompts."""
        from qlp_ray.models.prompt import parse_prompt
        from qlp_ray.train.ray_rlhf import RLHFOptions, train_rlhf_on_ray  # lazy: loads ray
        from qlp_ray.train.run_metrics import METRICS_FILE, write_loss_curve
        from qlp_ray.train.storage import run_storage

        join_or_start_ray(self.cfg)
        imp, tc = self.cfg.improve, self.cfg.train
        opts = RLHFOptions(
            steps=imp.dpo_steps, batch_size=tc.batch_size, learning_rate=imp.dpo_learning_rate,
            checkpoint_every=max(1, imp.dpo_steps), rank=tc.rank, alpha=tc.alpha,
            method_kwargs={"beta": imp.dpo_beta},
        )  # fmt: skip
        out = self.cfg.paths.runs / run_name
        out.mkdir(parents=True, exist_ok=True)
        storage, filesystem = run_storage(self.cfg)  # train.storage_uri, as qlp train
        result = train_rlhf_on_ray(
            "dpo", base_path=base_model_ref(self.cfg), data=pairs, options=opts,
            output_dir=out / "adapter", storage_path=storage, storage_filesystem=filesystem,
            run_name=run_name, parent_path=str(parent_dir), cpus_per_worker=tc.cpus_per_worker,
            max_failures=tc.max_failures, metrics_file=out / METRICS_FILE,
        )  # fmt: skip
        write_loss_curve(out, title=f"{run_name} (improve dpo, {imp.dpo_steps} steps)")
        metrics = {k: float(v) for k, v in result.metrics.items()
                   if isinstance(v, int | float) and not isinstance(v, bool)}  # fmt: skip
        prompts = [(parse_prompt(p.prompt) or (p.prompt, ""))[0] for p in pairs]
        meta = {"centroid": training_centroid(self.cfg, sorted(set(prompts)))}
        return TrainedAdapter(result.adapter_dir, metrics, meta)


def build_orchestrator(
    cfg: QLPConfig, *, progress: Callable[[str], None] | None = None
) -> Orchestrator:
    """An orchestrator on the configured store and registry with the real engines: Ray
    Train SFT/DPO, held-out perplexity / preference margin, and (``improve.live_ab``) live
    A/B experiments on the Serve app's experiments API."""

    evaluator = PreferenceEvaluator(cfg)
    return Orchestrator(
        cfg,
        FeedbackStore.from_config(cfg),
        Registry(cfg),
        RayTrainCandidateTrainer(cfg),
        evaluator,
        splitter=ServeExperimentSplitter(cfg) if cfg.improve.live_ab else None,
        base_model=base_model_id(cfg),
        progress=progress,
        preference_evaluator=evaluator,
    )
