"""Hyperparameter search for LoRA SFT: Ray Tune + ``OptunaSearch`` (TPE) + ``ASHAScheduler``.

Every trial is one Ray Train run of the SFT worker of ``qlp train``
(:func:`qlp_ray.train.ray_train.train_loop_per_worker`, with ``train.*`` plus the trial's
hyperparameters, evaluating and checkpointing every ``tune.eval_every`` steps); its
held-out ``eval_loss`` reaches Tune at every evaluation (:class:`_EvalsToTune`), so ASHA
can stop weak trials early. The Optuna study lives in an RDB (``tune.optuna_storage``,
SQLite by default) under the run's name, so ``optuna-dashboard <storage>`` shows it; the
search is an MLflow run whose trials are child runs (:mod:`qlp_ray.train.tracking`).
The best trial's adapter and config are copied to the output directory
(``adapter/`` + ``tune_best.json``), ready to be registered through the one pipeline
(:meth:`TuneOutcome.best_adapter` → :func:`qlp_ray.train.pipeline.run_pipeline`).
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from qlp_ray.core.config import QLPConfig, TrainConfig, read_yaml, without_secrets
from qlp_ray.core.errors import ConfigError, InvalidRequest, TrainingError
from qlp_ray.data.capsules import load_capsules, sample_path
from qlp_ray.data.format import to_prompt_completion
from qlp_ray.train import tracking
from qlp_ray.train.node_files import BaseModelRef, base_model_ref
from qlp_ray.train.pipeline import TrainedAdapter
from qlp_ray.train.placement import failure_config, placed_workers, quick_controller_polls
from qlp_ray.train.ray_train import sft_loop_config, train_loop_per_worker
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


def trial_train_config(cfg: QLPConfig, params: dict[str, Any]) -> TrainConfig:
    """``train.*`` with a trial's hyperparameters: a 1-worker LoRA run of ``tune.steps``
    steps, evaluated (and checkpointed) every ``tune.eval_every`` steps."""
    t = cfg.tune
    data = cfg.train.model_dump()
    modules = params.get("target_modules", ",".join(cfg.train.target_modules))
    data.update(
        method="lora",
        steps=t.steps,
        checkpoint_every=t.eval_every,
        workers=1,
        cpus_per_worker=t.cpus_per_trial,
        use_gpu=False,
        target_modules=[m.strip() for m in str(modules).split(",") if m.strip()],
        **{k: params[k] for k in ("rank", "alpha", "dropout", "learning_rate", "batch_size")
           if k in params},
    )  # fmt: skip
    return TrainConfig.model_validate(data)


def _evals_to_tune() -> Any:
    """Ray Train's ``TuneReportCallback`` for the held-out evaluations only: the SFT worker
    also reports every training-loss line (for MLflow), which holds no ``eval_loss`` (Tune
    and Optuna want the metric in every result)."""
    from ray.tune.integration.ray_train import TuneReportCallback

    class _EvalsToTune(TuneReportCallback):
        def after_report(self, run_context, metrics, checkpoint):
            first = metrics[0] if metrics else {}
            if METRIC in first and "checkpoint_step" not in first:
                super().after_report(run_context, metrics, checkpoint)

    return _EvalsToTune()


def make_trainable(
    cfg: QLPConfig,
    *,
    base_model: BaseModelRef,
    records: list[dict[str, str]],
    eval_records: list[dict[str, str]],
    storage_path: str,
    storage_filesystem: Any | None = None,
    parent_run: tuple[str, str] | None = None,
):
    """The Tune function trainable: one Ray Train SFT run per sampled config (an MLflow
    child run of ``parent_run``). Tune pickles it into the cluster's state, so the config
    it holds has no secrets (a trial needs none: core/config/secrets.py)."""
    cfg = without_secrets(cfg)

    def sft_trial(params: dict[str, Any]) -> None:
        import ray.tune
        from ray.train import CheckpointConfig, RunConfig, ScalingConfig
        from ray.train.torch import TorchTrainer

        trial = ray.tune.get_context().get_trial_id()
        train_cfg = trial_train_config(cfg, params)
        run = None
        if parent_run is not None:
            run = tracking.start_run(
                cfg,
                f"trial-{trial}",
                {"train": train_cfg.model_dump(mode="json"), "trial": params},
                tags={"qlp.trial_id": trial},
                parent_run_id=parent_run[1],
            )
        quick_controller_polls()
        trainer = TorchTrainer(
            train_loop_per_worker,
            train_loop_config=sft_loop_config(
                cfg,
                train_cfg,
                base_model=base_model,
                train_records=records,
                eval_records=eval_records,
                use_gpu=False,
            ),
            scaling_config=ScalingConfig(
                num_workers=1, resources_per_worker={"CPU": cfg.tune.cpus_per_trial}
            ),
            run_config=RunConfig(
                name=f"trial-{trial}",
                storage_path=storage_path,
                storage_filesystem=storage_filesystem,
                callbacks=[_evals_to_tune(), *tracking.report_callback(run)],
                checkpoint_config=CheckpointConfig(num_to_keep=2),
                failure_config=failure_config(train_cfg.max_failures),
            ),
        )
        try:
            result = trainer.fit()
        except SystemExit:  # Tune stops a trial (ASHA) with sys.exit(0) in its next report
            tracking.finish_run(run, stopped=True)
            raise
        except BaseException:
            tracking.finish_run(run, failed=True)
            raise
        tracking.finish_run(run, metrics=dict(result.metrics or {}))

    return sft_trial


@dataclass
class TuneOutcome:
    best_config: dict[str, Any]
    best_eval_loss: float
    trials: list[dict[str, Any]]  # one row per trial: params, eval_loss, iterations, status
    output_dir: Path | None
    study_name: str = ""
    optuna_storage: str = ""
    tracking_run: tuple[str, str] | None = None  # MLflow run of the search
    best_trial_run: tuple[str, str] | None = field(default=None)  # MLflow child run

    def best_adapter(self) -> TrainedAdapter:
        """The best trial's adapter (saved in ``output_dir``) with its tuning metadata, for
        :func:`qlp_ray.train.pipeline.run_pipeline` to sign and register."""
        adapter_dir = self.output_dir / "adapter" if self.output_dir is not None else None
        if adapter_dir is None or not adapter_dir.is_dir():
            raise TrainingError("the best trial left no adapter to register")
        return TrainedAdapter(
            adapter_dir,
            {METRIC: self.best_eval_loss},
            {"metrics": {METRIC: self.best_eval_loss},
             "tune": {"config": self.best_config, "study": self.study_name}},
            self.best_trial_run,
        )  # fmt: skip


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
    base_model = base_model_ref(cfg)  # each trial's worker finds or builds it on its node
    name = f"tune-{domain}-{time.strftime('%Y%m%d-%H%M%S')}"
    storage, filesystem = run_storage(cfg)  # <home>/runs, or train.storage_uri (S3)
    study_storage = optuna_storage_url(cfg)
    parent = tracking.start_run(
        cfg,
        name,
        {"tune": cfg.tune.model_dump(mode="json"), "space": sorted(space), "domain": domain,
         "trials": n},
        tags={"qlp.domain": domain, "qlp.optuna_study": name},
    )  # fmt: skip
    trainable = tune.with_resources(
        make_trainable(
            cfg,
            base_model=base_model,
            records=records,
            eval_records=eval_records,
            storage_path=f"{storage}/{name}/train",
            storage_filesystem=filesystem,
            parent_run=parent,
        ),
        # The trial process only waits on its TorchTrainer; CPUs are reserved by the trial's
        # Ray Train workers. (A fractional CPU here would leave e.g. 0.99 of 1 CPU free and
        # the worker could never be placed.) Tune needs a non-empty bundle: 1 MiB of memory.
        {"CPU": 0, "memory": 1 << 20},
    )
    # ASHA's rungs are held-out evaluations (every tune.eval_every steps); max_t past the
    # last step, so that a trial that passes every rung reports its final adapter
    eval_every = min(cfg.tune.eval_every, cfg.tune.steps)
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
                search_alg=OptunaSearch(
                    seed=cfg.tune.seed, study_name=name, storage=_rdb_storage(study_storage)
                ),
                scheduler=ASHAScheduler(
                    time_attr="step",
                    max_t=cfg.tune.steps + 1,
                    grace_period=cfg.tune.grace_period * eval_every,
                    reduction_factor=2,
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
        logger.info(
            "tuning %s: %d trials over %s; Optuna study %s in %s",
            domain, n, sorted(space), name, study_storage,
        )  # fmt: skip
        try:
            grid = tuner.fit()
        except BaseException:
            tracking.finish_run(parent, failed=True)
            raise
    rows = []
    for r in grid:
        rows.append(
            {
                "params": {k: v for k, v in (r.config or {}).items()},
                METRIC: (r.metrics or {}).get(METRIC),
                "iterations": (r.metrics or {}).get("training_iteration"),
                "error": str(r.error) if r.error else None,
                "checkpoint_path": (r.metrics or {}).get("checkpoint_path"),
                "finished": (r.metrics or {}).get("finished") == 1.0,
                "trial_id": (r.metrics or {}).get("trial_id"),
            }
        )
    scored = [row for row in rows if isinstance(row[METRIC], int | float)]
    if not scored:
        errors = "; ".join(row["error"] or "no eval_loss" for row in rows)
        tracking.finish_run(parent, failed=True)
        raise TrainingError(f"no tuning trial produced an eval_loss: {errors}")
    # The best trial must have an adapter to register: prefer trials that ran to the end
    # (ASHA-stopped trials report an eval_loss but never save a final adapter).
    finished = [row for row in scored if row["finished"] and row["checkpoint_path"]]
    best = min(finished or scored, key=lambda row: row[METRIC])
    out = Path(output_dir) if output_dir is not None else None
    if out is not None:
        _save_best(best, out, domain, filesystem)
    stopped = {r["trial_id"] for r in rows if r["trial_id"] and not (r["error"] or r["finished"])}
    best_run = tracking.close_children(parent, best.get("trial_id"), stopped)
    tracking.finish_run(
        parent,
        metrics={"best_eval_loss": float(best[METRIC]), "trials": len(rows),
                 "finished_trials": len(finished)},
        tags={"qlp.best_trial": best.get("trial_id")},
    )  # fmt: skip
    return TuneOutcome(
        best["params"], float(best[METRIC]), rows, out, name, study_storage, parent, best_run
    )


def optuna_storage_url(cfg: QLPConfig) -> str:
    """``tune.optuna_storage``, or ``sqlite:///<home>/optuna.db``."""
    if cfg.tune.optuna_storage:
        return cfg.tune.optuna_storage
    cfg.paths.root.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{cfg.paths.root / 'optuna.db'}"


def _rdb_storage(url: str) -> Any:
    """Optuna's ``RDBStorage`` at ``url``; ``ConfigError`` naming ``tune.optuna_storage``."""
    import optuna

    try:
        return optuna.storages.RDBStorage(url)
    except Exception as exc:
        raise ConfigError(f"`tune.optuna_storage` {url!r} cannot be opened: {exc}") from exc


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


__all__ = [
    "TuneOutcome",
    "load_space",
    "make_trainable",
    "optuna_storage_url",
    "parse_space",
    "run_tune",
    "trial_train_config",
]
