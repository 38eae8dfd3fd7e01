"""Adapter training on Ray Train: a ``TorchTrainer`` whose workers run the TRL SFT loop.

The driver loads and checks the capsules, resolves the base model once (building the
builtin one if needed), and ships a plain-dict config to the workers. Each worker runs
:func:`qlp_ray.train.sft.run_sft` under DDP (``prepare_trainer``), reports the trainer's
log lines with ``ray.train.report`` (visible in the Ray dashboard, logged to MLflow by
:mod:`qlp_ray.train.tracking`), reports a resumable checkpoint every
``train.checkpoint_every`` steps, and rank 0 reports the final adapter as the last
checkpoint, which the driver copies out. ``FailureConfig(train.max_failures)`` restarts a
failed worker group, which resumes from the latest checkpoint (:mod:`ray_resume`).

:func:`train_loop_per_worker` is the one SFT worker: ``qlp train`` runs it
(:func:`train_adapter`) and so does every ``qlp tune`` trial (``qlp_ray.tune.search``).
"""

from __future__ import annotations

import json
import logging
import os
import random
import shutil
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from qlp_ray.core.config import QLPConfig, TrainConfig
from qlp_ray.core.errors import ConfigError, InvalidRequest, TrainingError
from qlp_ray.data.capsules import load_capsules
from qlp_ray.data.format import routing_text, to_prompt_completion
from qlp_ray.data.quality import MIN_TRAIN_RECORDS
from qlp_ray.registry import validate_adapter_id
from qlp_ray.train import tracking
from qlp_ray.train.node_files import (
    BaseModelRef,
    base_model_ref,
    materialize,
    resolve_base_on_node,
    restore_metrics_from,
    save_metrics_to,
    ship_file,
)
from qlp_ray.train.peft_setup import build_peft_config
from qlp_ray.train.placement import failure_config, placed_workers, quick_controller_polls
from qlp_ray.train.ray_metrics import live_metrics_callback, metrics_from_checkpoint
from qlp_ray.train.ray_resume import HF_CHECKPOINT, kill_worker_callback, resume_dir
from qlp_ray.train.run_metrics import METRICS_FILE, append_metrics, write_loss_curve
from qlp_ray.train.sft import ADAPTER_FILES, run_sft
from qlp_ray.train.storage import run_storage

logger = logging.getLogger(__name__)


@dataclass
class TrainingData:
    """Capsules of one domain, split into training and held-out records."""

    train: list[Any]
    heldout: list[Any]
    heldout_source: str  # "file" or "split"


@dataclass
class TrainResult:
    """The adapter directory copied out of the Ray Train checkpoint, and the run's metrics."""

    adapter_dir: Path
    metrics: dict[str, Any]
    run_dir: Path | None = None
    routing_texts: list[str] = field(default_factory=list)
    reported: dict[str, Any] = field(default_factory=dict)  # last ``ray.train.report`` of rank 0
    tracking_run: tuple[str, str] | None = None  # MLflow (tracking URI, run id)


def effective_train_config(
    cfg: QLPConfig,
    *,
    method: str | None = None,
    workers: int | None = None,
    steps: int | None = None,
    overrides: dict[str, Any] | None = None,
) -> TrainConfig:
    """``cfg.train`` with overrides, validated again (``ConfigError`` names the option).

    ``overrides`` sets further ``train.*`` fields (``rank``, ``alpha``, ``dropout``,
    ``batch_size``, ``learning_rate``); None values are ignored; a dict updates a
    sub-section (``{"ppo": {"kl_coef": 0.1}}``).
    """
    data = cfg.train.model_dump()
    given = (("method", method), ("workers", workers), ("steps", steps))
    for key, value in (*given, *(overrides or {}).items()):
        if isinstance(value, dict) and isinstance(data.get(key), dict):
            data[key] = {**data[key], **{k: v for k, v in value.items() if v is not None}}
        elif value is not None:
            data[key] = value
    try:
        return TrainConfig.model_validate(data)
    except ValidationError as exc:
        parts = [
            f"`train.{'.'.join(str(p) for p in e['loc'])}`: {e['msg']}" if e["loc"] else e["msg"]
            for e in exc.errors()
        ]
        raise ConfigError("invalid training options: " + "; ".join(parts)) from exc


def _load(path: Path, domain: str, what: str) -> list[Any]:

    try:
        capsules = load_capsules(path)
    except InvalidRequest as exc:
        raise TrainingError(f"cannot read {what} data: {exc}") from exc
    if not capsules:
        raise TrainingError(f"{what} data {path} holds no records")
    wrong = sorted({c.domain for c in capsules if c.domain != domain})
    if wrong:
        n = sum(c.domain != domain for c in capsules)
        raise TrainingError(
            f"{what} data {path}: {n} of {len(capsules)} records belong to domain(s) "
            f"{', '.join(map(repr, wrong))}, not {domain!r}"
        )
    return capsules


def load_training_data(
    domain: str,
    data_path: str | Path,
    heldout_path: str | Path | None = None,
    *,
    eval_fraction: float = 0.15,
    seed: int = 0,
) -> TrainingData:
    """Load and check a domain's capsules; split ``eval_fraction`` off when no held-out file."""
    train = _load(Path(data_path), domain, "training")
    if heldout_path is not None:
        return TrainingData(train, _load(Path(heldout_path), domain, "held-out"), "file")
    if len(train) < MIN_TRAIN_RECORDS:
        raise TrainingError(
            f"training data {data_path} has {len(train)} record(s): need at least "
            f"{MIN_TRAIN_RECORDS} to split "
            "off a held-out part (or pass a held-out file)"
        )
    order = list(range(len(train)))
    random.Random(seed).shuffle(order)
    n_eval = min(len(train) - 1, max(1, round(len(train) * eval_fraction)))
    eval_idx = set(order[:n_eval])
    return TrainingData(
        train=[c for i, c in enumerate(train) if i not in eval_idx],
        heldout=[c for i, c in enumerate(train) if i in eval_idx],
        heldout_source="split",
    )


def _scalar_metrics(logs: dict[str, Any]) -> dict[str, float]:
    return {
        k: float(v)
        for k, v in logs.items()
        if isinstance(v, int | float) and not isinstance(v, bool)
    }


ADAPTER_DIR = "adapter"  # the final checkpoint: adapter/ + metrics.json
RUN_STATE = "qlp_sft.json"  # in every checkpoint: what a resumed run cannot measure again


def _ray_report_callback(metrics_file: str | None, state: dict[str, Any], tmp: str):
    """A ``TrainerCallback`` that sends every trainer log line to ``ray.train.report`` (given
    ``metrics_file``, rank 0's file in its temp dir, appended there too:
    :mod:`qlp_ray.train.run_metrics`) and, at every checkpoint the trainer saves, reports it
    (rank 0; with ``state`` and the metrics so far written beside it).

    Every rank logs and saves at the same steps, so every rank reports equally often (the
    report is a barrier across workers).
    """
    import ray.train
    from transformers import TrainerCallback

    class RayMetricsCallback(TrainerCallback):
        def __init__(self) -> None:
            self.reports = 0
            self.step_logs: dict[str, float] = {}  # what was logged at the current step

        def on_log(self, args, state_, control, logs=None, **kwargs):
            metrics = _scalar_metrics(logs or {})
            if metrics:
                if state_.global_step == 0 and "eval_loss" in metrics:
                    state.setdefault("eval_loss_before", metrics["eval_loss"])
                if metrics_file is not None:
                    append_metrics(metrics_file, {**metrics, "step": state_.global_step})
                if self.step_logs.get("step") != state_.global_step:
                    self.step_logs = {"step": state_.global_step}
                self.step_logs.update(metrics)
                ray.train.report({**metrics, "step": state_.global_step})
                self.reports += 1
            return control

        def on_save(self, args, state_, control, **kwargs):
            step = state_.global_step
            checkpoint = None
            src = Path(args.output_dir) / f"checkpoint-{step}"
            if ray.train.get_context().get_world_rank() == 0 and src.is_dir():
                (src / RUN_STATE).write_text(json.dumps(state))
                save_metrics_to(metrics_file, src)  # a resumed rank 0 continues from it
                dest = Path(tmp) / f"report-{step}"
                shutil.copytree(src, dest / HF_CHECKPOINT)
                checkpoint = ray.train.Checkpoint.from_directory(str(dest))
            metrics = {**self.step_logs, "step": step, "checkpoint_step": step}
            ray.train.report(metrics, checkpoint=checkpoint)  # uploads synchronously
            if checkpoint is not None:
                shutil.rmtree(Path(tmp) / f"report-{step}", ignore_errors=True)
            self.reports += 1
            return control

    return RayMetricsCallback()


def _worker_init(init: dict[str, Any] | None, tmp: str) -> dict[str, str] | None:
    """The meta-init the driver shipped (bytes), as the ``{"weights", "sha256"}`` of a file
    in this worker's ``tmp`` (``apply_init`` checks the digest again)."""
    if init is None or "data" not in init:
        return init
    dest = materialize({init["name"]: init["data"]}, Path(tmp) / "init")
    return {"weights": str(dest / init["name"]), "sha256": init["sha256"]}


def train_loop_per_worker(config: dict[str, Any]) -> dict[str, Any]:
    """Ray Train worker: run (or resume) the SFT loop with checkpoints; rank 0 reports the
    adapter, with the run's ``metrics.jsonl``, as the final checkpoint.

    Nothing here reads the driver's disk: the base model resolves on this node
    (:func:`~qlp_ray.train.node_files.resolve_base_on_node`), records and a meta-init come
    in ``config``, and rank 0 keeps its metrics in its temp dir and its checkpoints.
    """
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import ray.train
    from ray.train.huggingface.transformers import prepare_trainer

    rank = ray.train.get_context().get_world_rank()
    train_cfg = TrainConfig.model_validate(config["train"])
    base_path = resolve_base_on_node(config["base_model"])
    with tempfile.TemporaryDirectory(prefix="qlp-train-") as tmp:
        metrics_file = str(Path(tmp) / METRICS_FILE) if rank == 0 else None
        resume, resumed_step = resume_dir(tmp)
        state: dict[str, Any] = {}
        if resume is not None:
            state = json.loads((Path(resume) / RUN_STATE).read_text())
            logger.info("resuming SFT at step %d from %s", resumed_step, resume)
            if metrics_file is not None:  # the lines up to the checkpoint's step
                restore_metrics_from(resume, metrics_file, resumed_step)
        reporter = _ray_report_callback(metrics_file, state, tmp)
        callbacks: list[Any] = [reporter]
        if config.get("kill_at_step"):  # test hook: a worker dies mid-run
            callbacks.append(kill_worker_callback(config["kill_at_step"], 0, config["kill_marker"]))
        result = run_sft(
            base_path,
            config["train_records"],
            config["eval_records"],
            train_cfg,
            tmp,
            max_seq_len=config["max_seq_len"],
            callbacks=callbacks,
            prepare=prepare_trainer,
            save_adapter=rank == 0,
            use_cpu=not config["use_gpu"],
            checkpoints=train_cfg.checkpoint_every > 0,
            resume_from=resume,
            eval_loss_before=state.get("eval_loss_before"),
            init=_worker_init(config.get("init"), tmp),
            model_dtype=config.get("model_dtype", "auto"),
        )
        metrics = {
            **result.metrics(),
            "log_reports": reporter.reports,
            "resumed_from_step": resumed_step,
        }
        # "finished", not "done": Tune reads "done" as "stop this trial"; "eval_loss" is
        # the metric Tune searches on
        final = {**_scalar_metrics(metrics), "eval_loss": result.eval_loss_after,
                 "step": result.steps, "finished": 1.0}  # fmt: skip
        checkpoint = None
        if rank == 0 and result.adapter_dir is not None:
            out = Path(tmp) / "final"
            shutil.copytree(result.adapter_dir, out / ADAPTER_DIR)
            (out / "metrics.json").write_text(json.dumps(metrics))
            save_metrics_to(metrics_file, out)
            checkpoint = ray.train.Checkpoint.from_directory(str(out))
        ray.train.report(final, checkpoint=checkpoint)  # uploads synchronously
    return metrics


def sft_loop_config(
    cfg: QLPConfig,
    train_cfg: TrainConfig,
    *,
    train_records: list[dict[str, str]],
    eval_records: list[dict[str, str]],
    use_gpu: bool,
    base_model: BaseModelRef | str | None = None,
    init: dict[str, str] | None = None,
) -> dict[str, Any]:
    """The ``train_loop_config`` of :func:`train_loop_per_worker`: no path under the
    driver's home. ``base_model``: default :func:`~qlp_ray.train.node_files.base_model_ref`
    of ``cfg`` (a plain string is a directory or hub id every worker's node has). ``init``
    (``{"weights", "sha256"}``, a verified meta-init on the driver): its bytes are shipped.
    """
    config: dict[str, Any] = {
        "train": train_cfg.model_dump(mode="json"),
        "base_model": base_model if base_model is not None else base_model_ref(cfg),
        "train_records": train_records,
        "eval_records": eval_records,
        "max_seq_len": cfg.model.max_seq_len,
        "use_gpu": use_gpu,
        "model_dtype": cfg.model.dtype,  # mixed precision on a GPU (models/precision.py)
    }
    if init is not None:
        config["init"] = {**ship_file(init["weights"]), "sha256": init["sha256"]}
    return config


def _use_gpu(train_cfg: TrainConfig) -> bool:
    """``train.use_gpu``, or when unset: whether the Ray cluster (else this host) has a GPU."""
    if train_cfg.use_gpu is not None:
        return train_cfg.use_gpu
    import ray

    if ray.is_initialized():
        return ray.cluster_resources().get("GPU", 0) > 0
    import torch

    return torch.cuda.is_available()


def train_adapter(
    cfg: QLPConfig,
    *,
    domain: str,
    data_path: str | Path,
    heldout_path: str | Path | None = None,
    method: str | None = None,
    workers: int | None = None,
    steps: int | None = None,
    overrides: dict[str, Any] | None = None,
    run_name: str | None = None,
    init: dict[str, str] | None = None,
    _kill_at_step: int | None = None,
) -> TrainResult:
    """Train one adapter for ``domain`` on Ray Train; return its directory and metrics.

    ``overrides``: more ``train.*`` fields (:func:`effective_train_config`). ``run_name``
    names the run directory under ``paths.runs`` (default: domain, method, time); a REST
    job passes its job id so that its metrics can be found while it runs. The run is an
    MLflow run of the same name (``tracking.*``). ``init`` (``{"weights", "sha256"}`` of a
    verified meta-init): every worker starts its adapter from it. ``_kill_at_step``: test
    hook, rank 0 dies once at that step (the run resumes from its last checkpoint).
    """
    train_cfg = effective_train_config(
        cfg, method=method, workers=workers, steps=steps, overrides=overrides
    )
    build_peft_config(train_cfg, train_cfg.steps)  # fail here, not in every worker
    data = load_training_data(
        domain,
        data_path,
        heldout_path,
        eval_fraction=train_cfg.eval_fraction,
        seed=train_cfg.seed,
    )
    use_gpu = _use_gpu(train_cfg)
    if run_name is not None:  # a directory name: no path separators, no '..'
        validate_adapter_id(run_name, "run name")
    run_name = run_name or (
        f"{domain}-{train_cfg.method}-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
    )
    (cfg.paths.runs / run_name).mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    # placed first: an unplaceable run fails before it builds anything
    placement = placed_workers(
        "training",
        train_cfg.workers,
        train_cfg.cpus_per_worker,
        use_gpu,
        timeout_s=train_cfg.placement_timeout_s,
        hardware=cfg.hardware,
    )
    with placement as n_workers:
        train_cfg = train_cfg.model_copy(update={"workers": n_workers})
        run = tracking.start_run(
            cfg,
            run_name,
            {"train": train_cfg.model_dump(mode="json"), "domain": domain,
             "base_model": cfg.model.base_model, "data_path": str(data_path)},
            tags={"qlp.domain": domain, "qlp.method": train_cfg.method},
        )  # fmt: skip
        try:
            result = _fit(cfg, train_cfg, data, use_gpu, run_name, run, _kill_at_step, init)
            trained = _finish(cfg, train_cfg, data, run_name, result, t0)
        except BaseException:
            tracking.finish_run(run, failed=True)
            raise
    tracking.finish_run(run, metrics=trained.metrics)
    trained.tracking_run = run
    return trained


def _fit(
    cfg: QLPConfig,
    train_cfg: TrainConfig,
    data: TrainingData,
    use_gpu: bool,
    run_name: str,
    tracking_run: tuple[str, str] | None = None,
    kill_at_step: int | None = None,
    init: dict[str, str] | None = None,
) -> Any:
    """Run the TorchTrainer on ``train_cfg.workers`` (each resolves the base model on its
    node); rank 0's reports are appended live to the run's ``metrics.jsonl`` here."""
    from ray.train import (  # lazy: loads torch
        CheckpointConfig,
        RunConfig,
        ScalingConfig,
        TrainingFailedError,
    )
    from ray.train.torch import TorchTrainer

    storage_path, filesystem = run_storage(cfg)
    loop_config = sft_loop_config(
        cfg,
        train_cfg,
        train_records=[to_prompt_completion(c) for c in data.train],
        eval_records=[to_prompt_completion(c) for c in data.heldout],
        use_gpu=use_gpu,
        init=init,
    )
    live = live_metrics_callback(cfg.paths.runs / run_name / METRICS_FILE)
    if kill_at_step is not None:
        marker = cfg.paths.runs / run_name / "killed"
        loop_config.update(kill_at_step=kill_at_step, kill_marker=str(marker))
    quick_controller_polls()
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config=loop_config,
        scaling_config=ScalingConfig(
            num_workers=train_cfg.workers,
            use_gpu=use_gpu,
            resources_per_worker={
                **train_cfg.resources_per_worker,
                "CPU": train_cfg.cpus_per_worker,
            },
        ),
        run_config=RunConfig(
            storage_path=storage_path,
            storage_filesystem=filesystem,
            name=run_name,
            failure_config=failure_config(train_cfg.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=2),
            callbacks=[*tracking.report_callback(tracking_run), *live],
        ),
    )
    logger.info(
        "Ray Train run %s: %s on %d train / %d held-out records (%s), %d worker(s), %d steps",
        run_name,
        train_cfg.method,
        len(data.train),
        len(data.heldout),
        data.heldout_source,
        train_cfg.workers,
        train_cfg.steps,
    )
    try:
        result = trainer.fit()
    except TrainingFailedError as exc:
        raise TrainingError(f"Ray Train run {run_name} failed: {exc}") from exc
    return result


def _finish(
    cfg: QLPConfig,
    train_cfg: TrainConfig,
    data: TrainingData,
    run_name: str,
    result: Any,
    t0: float,
) -> TrainResult:
    """The adapter out of the run's checkpoint, with its metrics."""
    if result.error is not None:
        raise TrainingError(f"Ray Train run {run_name} failed: {result.error}")
    if result.checkpoint is None or not isinstance(result.return_value, dict):
        raise TrainingError(f"Ray Train run {run_name} finished without an adapter checkpoint")

    run_dir = cfg.paths.runs / run_name
    adapter_dir = run_dir / "adapter"
    _copy_adapter(result.checkpoint, adapter_dir, metrics_to=run_dir / METRICS_FILE)
    write_loss_curve(run_dir, title=f"{run_name} ({train_cfg.method}, {train_cfg.steps} steps)")
    metrics = dict(result.return_value)
    metrics.update(
        run_seconds=round(time.perf_counter() - t0, 2),
        workers=train_cfg.workers,
        train_records=len(data.train),
        heldout_records=len(data.heldout),
        heldout_source=data.heldout_source,
        run_name=run_name,
    )
    logger.info(
        "Ray Train run %s done in %.1f s: held-out loss %.4f -> %.4f",
        run_name,
        metrics["run_seconds"],
        metrics["eval_loss_before"],
        metrics["eval_loss_after"],
    )
    return TrainResult(
        adapter_dir=adapter_dir,
        metrics=metrics,
        run_dir=run_dir,
        routing_texts=[routing_text(c) for c in data.train],
        reported=dict(result.metrics or {}),
    )


def _copy_adapter(checkpoint: Any, dest: Path, metrics_to: Path | None = None) -> None:
    """Copy only the adapter files out of a Ray Train checkpoint into ``dest`` (and rank 0's
    ``metrics.jsonl`` to ``metrics_to``)."""
    dest.mkdir(parents=True, exist_ok=True)
    with checkpoint.as_directory() as ckpt_dir:
        metrics_from_checkpoint(ckpt_dir, metrics_to)
        src = Path(ckpt_dir) / ADAPTER_DIR
        missing = [name for name in ADAPTER_FILES if not (src / name).is_file()]
        if missing:
            raise TrainingError(f"checkpoint {src} lacks {', '.join(missing)}")
        for name in ADAPTER_FILES:
            shutil.copyfile(src / name, dest / name)


__all__ = [
    "TrainResult",
    "TrainingData",
    "effective_train_config",
    "load_training_data",
    "sft_loop_config",
    "train_adapter",
    "train_loop_per_worker",
]
