"""Hyperparameter search for LoRA SFT: Ray Tune + ``OptunaSearch`` (TPE) + ``ASHAScheduler``.

Every trial is one Ray Train run (``TorchTrainer`` of :mod:`qlp_ray.train.ray_rlhf`, whose
``sft`` method trains with the trainer of the production SFT loop,
:func:`qlp_ray.train.sft.build_sft_trainer`) whose held-out ``eval_loss`` reaches Tune
through ``TuneReportCallback`` at every evaluation, so ASHA can stop weak trials early.
The best trial's adapter and config are copied to the output directory
(``adapter/`` + ``tune_best.json``), ready to be registered through the one pipeline
(:meth:`TuneOutcome.best_adapter` → :func:`qlp_ray.train.pipeline.run_pipeline`).
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from qlp_ray.core.config import QLPConfig, read_yaml
from qlp_ray.core.errors import ConfigError, InvalidRequest, TrainingError
from qlp_ray.data.capsules import load_capsules, sample_path
from qlp_ray.data.format import to_prompt_completion
from qlp_ray.models.base import resolve_base_path
from qlp_ray.train.pipeline import TrainedAdapter
from qlp_ray.train.placement import failure_config, placed_workers, quick_controller_polls
from qlp_ray.train.ray_rlhf import RLHFOptions, rlhf_loop_per_worker
from qlp_ray.train.storage import run_storage

logger = logging.getLogger(__name__)

TUNABLE = ("rank", "alpha", "dropout", "learning_rate", "target_modules", "batch_size")
METRIC = "eval_loss"


def parse_space(spec: dict[str, Any]) -> dict[str, Any]:
    """YAML search space -> Ray Tune domains; errors name the key and the problem."""
    from ray import tune

    if not spec:
        raise ConfigError("search space is empty")
    space: dict[str, Any] = {}
    for key, dom in spec.items():
        if key not in TUNABLE:
            raise ConfigError(f"search space: unknown hyperparameter {key!r} (tunable: {TUNABLE})")
        if not isinstance(dom, dict) or "type" not in dom:
            raise ConfigError(f"search space: {key!r} needs a mapping with a 'type'")
        kind = dom["type"]
        try:
            if kind == "choice":
                values = list(dom["values"])
                if not values or not all(isinstance(v, str | int | float) for v in values):
                    raise ConfigError(f"search space: {key!r} choices must be scalars")
                space[key] = tune.choice(values)
            elif kind in ("uniform", "loguniform"):
                low, high = float(dom["low"]), float(dom["high"])
                if not low < high or (kind == "loguniform" and low <= 0):
                    raise ConfigError(f"search space: {key!r} needs 0 < low < high (got {dom})")
                space[key] = (tune.uniform if kind == "uniform" else tune.loguniform)(low, high)
            elif kind == "randint":
                space[key] = tune.randint(int(dom["low"]), int(dom["high"]))
            else:
                raise ConfigError(f"search space: {key!r} has unknown type {kind!r}")
        except KeyError as exc:
            raise ConfigError(f"search space: {key!r} ({kind}) misses {exc.args[0]!r}") from exc
    return space


def load_space(path: str | Path) -> dict[str, Any]:
    return parse_space(read_yaml(path))


def _trial_options(cfg: QLPConfig, params: dict[str, Any]) -> Any:

    t = cfg.tune
    modules = params.get("target_modules", ",".join(cfg.train.target_modules))
    return RLHFOptions(
        steps=t.steps,
        batch_size=int(params.get("batch_size", cfg.train.batch_size)),
        learning_rate=float(params.get("learning_rate", cfg.train.learning_rate)),
        lr_scheduler_type="linear",
        warmup_ratio=cfg.train.warmup_ratio,
        checkpoint_every=t.eval_every,
        rank=int(params.get("rank", cfg.train.rank)),
        alpha=int(params.get("alpha", cfg.train.alpha)),
        target_modules=tuple(m.strip() for m in str(modules).split(",") if m.strip()),
        seed=cfg.train.seed,
        method_kwargs={
            "dropout": float(params.get("dropout", cfg.train.dropout)),
            "max_length": cfg.model.max_seq_len,
        },
    )


def make_trainable(
    cfg: QLPConfig,
    *,
    base_path: str,
    records: list[dict[str, str]],
    eval_records: list[dict[str, str]],
    storage_path: str,
    storage_filesystem: Any | None = None,
):
    """The Tune function trainable: one Ray Train SFT run per sampled config."""

    def sft_trial(params: dict[str, Any]) -> None:
        import ray.tune
        from ray.train import CheckpointConfig, RunConfig, ScalingConfig
        from ray.train.torch import TorchTrainer
        from ray.tune.integration.ray_train import TuneReportCallback

        trial = ray.tune.get_context().get_trial_id()
        quick_controller_polls()
        trainer = TorchTrainer(
            rlhf_loop_per_worker,
            train_loop_config={
                "method": "sft",
                "base_path": base_path,
                "data": records,
                "eval_data": eval_records,
                "options": _trial_options(cfg, params),
                "threads": max(1, int(cfg.tune.cpus_per_trial)),
            },
            scaling_config=ScalingConfig(
                num_workers=1, resources_per_worker={"CPU": cfg.tune.cpus_per_trial}
            ),
            run_config=RunConfig(
                name=f"trial-{trial}",
                storage_path=storage_path,
                storage_filesystem=storage_filesystem,
                callbacks=[TuneReportCallback()],
                checkpoint_config=CheckpointConfig(num_to_keep=1),
                failure_config=failure_config(),
            ),
        )
        trainer.fit()

    return sft_trial


@dataclass
class TuneOutcome:
    best_config: dict[str, Any]
    best_eval_loss: float
    trials: list[dict[str, Any]]  # one row per trial: params, eval_loss, iterations, status
    output_dir: Path | None

    def best_adapter(self) -> TrainedAdapter:
        """The best trial's adapter (saved in ``output_dir``) with its tuning metadata, for
        :func:`qlp_ray.train.pipeline.run_pipeline` to sign and register."""
        adapter_dir = self.output_dir / "adapter" if self.output_dir is not None else None
        if adapter_dir is None or not adapter_dir.is_dir():
            raise TrainingError("the best trial left no adapter to register")
        return TrainedAdapter(
            adapter_dir,
            {METRIC: self.best_eval_loss},
            {"metrics": {METRIC: self.best_eval_loss}, "tune": {"config": self.best_config}},
        )


def run_tune(
    cfg: QLPConfig,
    *,
    domain: str,
    space: dict[str, Any],
    trials: int | None = None,
    output_dir: str | Path | None = None,
    records: list[dict[str, str]] | None = None,
    eval_records: list[dict[str, str]] | None = None,
) -> TuneOutcome:
    """Search ``space`` with ``trials`` Ray Train runs on ``domain``'s samples."""
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search.optuna import OptunaSearch

    n = trials or cfg.tune.trials
    if n < 1:
        raise InvalidRequest(f"trials must be >= 1, got {n}")
    if records is None or eval_records is None:
        records = [to_prompt_completion(c) for c in load_capsules(sample_path(domain, "train"))]
        eval_records = [
            to_prompt_completion(c) for c in load_capsules(sample_path(domain, "heldout"))
        ]
    base_path = resolve_base_path(cfg)  # build the builtin model once, here
    name = f"tune-{domain}-{time.strftime('%Y%m%d-%H%M%S')}"
    storage, filesystem = run_storage(cfg)  # <home>/runs, or train.storage_uri (S3)
    trainable = tune.with_resources(
        make_trainable(
            cfg,
            base_path=base_path,
            records=records,
            eval_records=eval_records,
            storage_path=f"{storage}/{name}/train",
            storage_filesystem=filesystem,
        ),
        # The trial process only waits on its TorchTrainer; CPUs are reserved by the trial's
        # Ray Train workers. (A fractional CPU here would leave e.g. 0.99 of 1 CPU free and
        # the worker could never be placed.) Tune needs a non-empty bundle: 1 MiB of memory.
        {"CPU": 0, "memory": 1 << 20},
    )
    max_t = max(1, cfg.tune.steps // cfg.tune.eval_every) + 1  # + the final report
    placement = placed_workers(
        "tune",
        cfg.tune.max_concurrent,
        cfg.tune.cpus_per_trial,
        False,
        timeout_s=cfg.train.placement_timeout_s,
        hardware=cfg.hardware,
    )
    with placement as concurrent:  # trials at once = trial workers that fit now
        tuner = tune.Tuner(
            trainable,
            param_space=space,
            tune_config=tune.TuneConfig(
                metric=METRIC,
                mode="min",
                search_alg=OptunaSearch(seed=cfg.tune.seed),
                scheduler=ASHAScheduler(
                    max_t=max_t, grace_period=cfg.tune.grace_period, reduction_factor=2
                ),
                num_samples=n,
                max_concurrent_trials=concurrent,
                # a fresh trial process per trial: a second TorchTrainer in a reused trial
                # actor was seen to wait forever for its workers
                reuse_actors=False,
            ),
            run_config=tune.RunConfig(
                name=name, storage_path=storage, storage_filesystem=filesystem
            ),
        )
        logger.info("tuning %s: %d trials over %s", domain, n, sorted(space))
        grid = tuner.fit()
    rows = []
    for r in grid:
        rows.append(
            {
                "params": {k: v for k, v in (r.config or {}).items()},
                METRIC: (r.metrics or {}).get(METRIC),
                "iterations": (r.metrics or {}).get("training_iteration"),
                "error": str(r.error) if r.error else None,
                "checkpoint_path": (r.metrics or {}).get("checkpoint_path"),
            }
        )
    scored = [row for row in rows if isinstance(row[METRIC], int | float)]
    if not scored:
        errors = "; ".join(row["error"] or "no eval_loss" for row in rows)
        raise TrainingError(f"no tuning trial produced an eval_loss: {errors}")
    # The best trial must have an adapter to register: prefer trials that ran to the end
    # (ASHA-stopped trials report an eval_loss but never save a final adapter).
    finished = [row for row in scored if row["checkpoint_path"]]
    best = min(finished or scored, key=lambda row: row[METRIC])
    out = Path(output_dir) if output_dir is not None else None
    if out is not None:
        _save_best(best, out, domain, filesystem)
    return TuneOutcome(best["params"], float(best[METRIC]), rows, out)


def _save_best(best: dict[str, Any], out: Path, domain: str, filesystem: Any | None) -> None:
    """The best trial's adapter (from its checkpoint, local or on ``filesystem``) and its
    config into ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    ckpt = best.get("checkpoint_path")
    if ckpt and filesystem is not None:  # remote storage (S3): download the adapter files
        from pyarrow import fs

        if filesystem.get_file_info(f"{ckpt}/adapter").type == fs.FileType.Directory:
            if (out / "adapter").exists():
                shutil.rmtree(out / "adapter")
            (out / "adapter").mkdir()
            fs.copy_files(f"{ckpt}/adapter", str(out / "adapter"),
                          source_filesystem=filesystem,
                          destination_filesystem=fs.LocalFileSystem())  # fmt: skip
    elif ckpt and (Path(ckpt) / "adapter").is_dir():
        if (out / "adapter").exists():
            shutil.rmtree(out / "adapter")
        shutil.copytree(Path(ckpt) / "adapter", out / "adapter")
    else:
        logger.warning("best trial has no final adapter checkpoint (stopped early by ASHA?)")
    (out / "tune_best.json").write_text(
        json.dumps({"domain": domain, "config": best["params"], METRIC: best[METRIC]}, indent=1)
    )


__all__ = ["TuneOutcome", "load_space", "make_trainable", "parse_space", "run_tune"]
