"""DPO, GRPO/RLOO, distillation and reward models on Ray Train (DDP; gloo on CPU); SFT
(``qlp train`` and the ``qlp tune`` trials) runs in :mod:`qlp_ray.train.ray_train`.

Each worker runs the plain TRL function from :mod:`qlp_ray.train.dpo`, ``rl`` or
``distill`` with ``prepare_trainer`` and Ray's ``RayTrainReportCallback``: every
``checkpoint_every`` steps the HF trainer saves a checkpoint (adapter, optimizer,
scheduler, RNG, step) and reports it, with the logged metrics, to Ray Train (and
so to the dashboard and to Tune). ``FailureConfig(max_failures)`` restarts a
failed worker group; the restarted workers resume from the latest reported
checkpoint (``ray.train.get_checkpoint()`` -> ``resume_from_checkpoint``).
Rank 0 reports the final adapter as the last checkpoint.

Schedules: cosine / linear / constant LR with linear warm-up, gradient accumulation, and
early stopping on eval loss (DPO, logit distillation) when an eval set is given. Rank 0
appends every trainer log line to a ``metrics.jsonl`` in its temp dir, kept in every
checkpoint and the final one; the driver writes it to ``metrics_file`` and draws the loss
curve from it, as for SFT. A worker reads nothing of the driver's disk
(:mod:`qlp_ray.train.node_files`): the base model resolves on its node, a parent adapter and
a teacher's adapter come as bytes.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from qlp_ray.core.errors import InvalidRequest, TrainingError
from qlp_ray.train._rlhf_common import RunOptions
from qlp_ray.train.distill import train_distill
from qlp_ray.train.dpo import train_dpo
from qlp_ray.train.node_files import (
    BaseModelRef,
    load_teacher,
    materialize,
    resolve_base_on_node,
    restore_metrics_from,
    save_metrics_to,
    ship_dir,
)
from qlp_ray.train.placement import failure_config, placed_workers, quick_controller_polls
from qlp_ray.train.ray_metrics import live_metrics_callback, metrics_from_checkpoint
from qlp_ray.train.ray_resume import kill_worker_callback as _kill_worker_callback
from qlp_ray.train.ray_resume import resume_dir as _resume_dir
from qlp_ray.train.ray_resume import world_rank as _rank
from qlp_ray.train.rl import train_rl
from qlp_ray.train.run_metrics import METRICS_FILE, append_metrics

logger = logging.getLogger(__name__)

RLHFMethod = Literal["dpo", "grpo", "rloo", "distill", "reward"]
ADAPTER_DIR = "adapter"


@dataclass
class RLHFOptions:
    """Schedule and robustness options shared by every method."""

    steps: int = 40
    batch_size: int = 8
    learning_rate: float = 5e-3
    lr_scheduler_type: str = "cosine"
    warmup_ratio: float = 0.1
    grad_accum: int = 1
    checkpoint_every: int = 10
    early_stopping_patience: int | None = None
    rank: int = 8
    alpha: int = 16
    target_modules: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj")
    seed: int = 0
    method_kwargs: dict[str, Any] = field(default_factory=dict)  # e.g. beta, num_generations

    def __post_init__(self) -> None:
        if self.lr_scheduler_type not in ("cosine", "linear", "constant_with_warmup"):
            raise InvalidRequest(f"unsupported lr_scheduler_type {self.lr_scheduler_type!r}")
        if self.checkpoint_every < 1 or self.steps < 1 or self.grad_accum < 1:
            raise InvalidRequest("steps, checkpoint_every and grad_accum must be >= 1")


@dataclass
class _Trained:
    model: Any
    train_loss: float
    metrics: dict[str, float]


@dataclass
class RLHFRayResult:
    adapter_dir: Path
    metrics: dict[str, Any]


def _extra_args(method: str, opts: RLHFOptions, has_eval: bool) -> dict[str, Any]:
    args: dict[str, Any] = {
        "save_strategy": "steps",
        "save_steps": opts.checkpoint_every,
        "logging_steps": 1,  # every step into metrics.jsonl: the curve
        "ddp_find_unused_parameters": False,
    }
    if has_eval:
        # RayTrainReportCallback reports on save, so evaluate at the same steps
        args.update(
            eval_strategy="steps",
            eval_steps=opts.checkpoint_every,
            metric_for_best_model="eval_loss",
            greater_is_better=False,
            load_best_model_at_end=opts.early_stopping_patience is not None,
        )
    return args


def _metrics_log_callback(path: str) -> Any:
    """A ``TrainerCallback`` appending each log line (with its step) to ``path``."""
    from transformers import TrainerCallback

    class LogMetrics(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kw):
            scalars = {k: v for k, v in (logs or {}).items()
                       if isinstance(v, int | float) and not isinstance(v, bool)}  # fmt: skip
            if scalars:
                append_metrics(path, {**scalars, "step": state.global_step})

    return LogMetrics()


def _report_callback() -> Any:
    """Ray's ``RayTrainReportCallback`` that first puts rank 0's ``metrics.jsonl`` (its
    ``metrics_file``, set once the temp dir exists) into the checkpoint it reports."""
    from ray.train.huggingface.transformers import RayTrainReportCallback
    from transformers.trainer_utils import get_last_checkpoint

    class ReportWithMetrics(RayTrainReportCallback):
        metrics_file: str | None = None

        def on_save(self, args, state, control, **kwargs):
            last = get_last_checkpoint(args.output_dir)
            if last is not None:
                save_metrics_to(self.metrics_file, last)
            return super().on_save(args, state, control, **kwargs)

    return ReportWithMetrics()


def rlhf_loop_per_worker(config: dict[str, Any]) -> None:
    """Ray Train worker: run one method with checkpoints, resume, and a final adapter report."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import ray.train
    import torch
    from ray.train.huggingface.transformers import prepare_trainer
    from transformers import AutoModelForCausalLM, AutoTokenizer, EarlyStoppingCallback

    torch.set_num_threads(max(1, int(config.get("threads", 1))))
    opts: RLHFOptions = config["options"]
    method = config["method"]
    base_path = resolve_base_on_node(config["base_path"])
    tokenizer = AutoTokenizer.from_pretrained(base_path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if method == "reward":  # a 1-label scorer on the base backbone (seeded score head)
        from transformers import AutoModelForSequenceClassification

        torch.manual_seed(opts.seed)
        model = AutoModelForSequenceClassification.from_pretrained(
            base_path, num_labels=1, dtype=torch.float32
        )
    else:
        model = AutoModelForCausalLM.from_pretrained(base_path, dtype=torch.float32)
    if config.get("parent_path"):  # continue a registered adapter (verified by the driver)
        from peft import PeftModel

        with tempfile.TemporaryDirectory(prefix="qlp-parent-") as parent:
            materialize(config["parent_path"], parent)  # its files, shipped as bytes
            model = PeftModel.from_pretrained(model, parent, is_trainable=True)
    evaluate = config.get("evaluate")  # (model, tokenizer) -> {metric: value}, rank 0 only
    before = evaluate(model, tokenizer) if evaluate and _rank() == 0 else {}
    reporter = _report_callback()
    callbacks: list[Any] = [reporter]
    has_eval = bool(config.get("eval_data"))
    if opts.early_stopping_patience is not None and has_eval:
        callbacks.append(
            EarlyStoppingCallback(early_stopping_patience=opts.early_stopping_patience)
        )
    if config.get("kill_at_step"):
        callbacks.append(_kill_worker_callback(config["kill_at_step"], 0, config["kill_marker"]))
    with tempfile.TemporaryDirectory(prefix=f"qlp-{method}-") as tmp:
        resume, resumed_step = _resume_dir(tmp)
        metrics_file = str(Path(tmp) / METRICS_FILE) if _rank() == 0 else None
        if metrics_file:
            if resume is not None:  # the lines up to the checkpoint's step
                restore_metrics_from(resume, metrics_file, resumed_step)
            reporter.metrics_file = metrics_file
            callbacks.append(_metrics_log_callback(metrics_file))
        out_dir = str(Path(tmp) / "out")
        run = RunOptions(
            rank=opts.rank,
            alpha=opts.alpha,
            target_modules=tuple(opts.target_modules),
            warmup_ratio=opts.warmup_ratio,
            lr_scheduler_type=opts.lr_scheduler_type,
            grad_accum=opts.grad_accum,
            seed=opts.seed,
            callbacks=callbacks,
            extra_args=_extra_args(method, opts, has_eval),
            prepare=prepare_trainer,
            resume_from_checkpoint=resume,
            new_adapter=not config.get("parent_path"),
            model_dtype=config.get("model_dtype", "auto"),
        )
        common = dict(
            steps=opts.steps,
            batch_size=opts.batch_size,
            learning_rate=opts.learning_rate,
            output_dir=out_dir,
            run=run,
            **opts.method_kwargs,
        )
        if method == "dpo":
            res = train_dpo(
                model,
                tokenizer,
                config["data"],
                eval_pairs=config.get("eval_data") or (),
                **common,
            )
        elif method in ("grpo", "rloo"):
            res = train_rl(
                model,
                tokenizer,
                config["data"],
                config["reward_funcs"],
                algorithm=method,
                **common,
            )
        elif method == "distill":
            teacher = load_teacher(config["teacher_path"])
            res = train_distill(
                model,
                teacher,
                tokenizer,
                config["data"],
                eval_texts=config.get("eval_data") or (),
                **common,
            )
        elif method == "reward":
            from qlp_ray.train.rewards import train_reward_lora

            trainer, out = train_reward_lora(model, tokenizer, config["data"], **common)
            res = _Trained(trainer.model, float(out.training_loss), dict(out.metrics))
        else:
            raise InvalidRequest(f"unknown method {method!r}")
        if evaluate and _rank() == 0:
            after = evaluate(res.model, tokenizer)
            for key in after:
                res.metrics[f"{key}_before"] = before.get(key, float("nan"))
                res.metrics[f"{key}_after"] = after[key]
        metrics = {
            **{
                k: float(v)
                for k, v in res.metrics.items()
                if isinstance(v, int | float) and not isinstance(v, bool)
            },
            "train_loss": res.train_loss,
            "resumed_from_step": float(resumed_step),
            "finished": 1.0,  # not "done": Tune reads that key as "stop this trial"
        }
        checkpoint = None
        if ray.train.get_context().get_world_rank() == 0:
            final = Path(tmp) / "final"
            save_kw = (
                {"selected_adapters": ["default"]} if hasattr(res.model, "peft_config") else {}
            )
            # (DPO from a parent adds a frozen "ref" copy of the adapter: not saved)
            res.model.save_pretrained(str(final / ADAPTER_DIR), safe_serialization=True, **save_kw)
            (final / "metrics.json").write_text(json.dumps(metrics))
            save_metrics_to(metrics_file, final)
            checkpoint = ray.train.Checkpoint.from_directory(str(final))
        ray.train.report(metrics, checkpoint=checkpoint)


def train_rlhf_on_ray(
    method: RLHFMethod,
    *,
    base_path: BaseModelRef | str,
    data: list[Any],
    options: RLHFOptions,
    output_dir: str | Path,
    storage_path: str | Path,
    run_name: str,
    storage_filesystem: Any = None,
    metrics_file: str | Path | None = None,
    eval_data: list[Any] | None = None,
    reward_funcs: list[Any] | None = None,
    teacher_path: dict[str, Any] | str | None = None,
    parent_path: str | Path | None = None,
    evaluate: Any = None,
    workers: int = 1,
    cpus_per_worker: float = 1.0,
    use_gpu: bool = False,
    model_dtype: str = "auto",
    max_failures: int = 1,
    placement_timeout_s: float = 120.0,
    ray_callbacks: list[Any] | None = None,
    _kill_at_step: int | None = None,
) -> RLHFRayResult:
    """Run ``method`` on ``workers`` Ray Train workers; copy the adapter to ``output_dir``.

    ``base_path``: :func:`~qlp_ray.train.node_files.base_model_ref` (or a directory / hub
    id every worker's node has); each worker resolves it on its node. ``parent_path``: a
    (verified) adapter directory here to continue instead of a new LoRA (its files are
    shipped). ``teacher_path``: a :func:`~qlp_ray.train.node_files.model_ref` (or a base).
    ``evaluate``: a picklable ``(model, tokenizer) -> {name: value}`` that rank 0 runs
    before and after training; the metrics get ``<name>_before`` / ``<name>_after``.
    ``storage_path`` / ``storage_filesystem``: Ray's checkpoints (``run_storage``);
    ``metrics_file``: rank 0's log lines (the run's curve), appended live as the reports come
    in, written from the final checkpoint at the end.
    """
    from ray.train import CheckpointConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    if method in ("grpo", "rloo") and not reward_funcs:
        raise InvalidRequest(f"{method} needs reward functions")
    if method == "distill" and not teacher_path:
        raise InvalidRequest("distillation needs a teacher model path")
    if not data:
        raise InvalidRequest(f"{method} needs training data")
    config: dict[str, Any] = {
        "method": method,
        "base_path": base_path,
        "data": data,
        "eval_data": eval_data,
        "reward_funcs": reward_funcs,
        "teacher_path": teacher_path,
        "parent_path": ship_dir(parent_path) if parent_path is not None else None,
        "evaluate": evaluate,
        "options": options,
        "threads": max(1, int(cpus_per_worker)),
        "model_dtype": model_dtype,  # mixed precision on a GPU (models/precision.py)
    }
    if _kill_at_step is not None:  # test hook: a marker on a local storage path
        Path(storage_path).mkdir(parents=True, exist_ok=True)
        config.update(
            kill_at_step=_kill_at_step, kill_marker=str(Path(storage_path) / f"{run_name}.killed")
        )
    with placed_workers(
        method, workers, cpus_per_worker, use_gpu, timeout_s=placement_timeout_s
    ) as n_workers:
        quick_controller_polls()
        trainer = TorchTrainer(
            rlhf_loop_per_worker,
            train_loop_config=config,
            scaling_config=ScalingConfig(
                num_workers=n_workers,
                use_gpu=use_gpu,
                resources_per_worker={"CPU": cpus_per_worker},
            ),
            run_config=RunConfig(
                name=run_name,
                storage_path=str(storage_path),
                storage_filesystem=storage_filesystem,
                failure_config=failure_config(max_failures),
                checkpoint_config=CheckpointConfig(num_to_keep=2),
                callbacks=[*(ray_callbacks or []), *live_metrics_callback(metrics_file)],
            ),
        )
        logger.info(
            "Ray Train %s run %s: %d worker(s), %d steps",
            method,
            run_name,
            n_workers,
            options.steps,
        )
        result = trainer.fit()
    if result.error is not None:
        raise TrainingError(f"{method} run {run_name} failed: {result.error}")
    if result.checkpoint is None:
        raise TrainingError(f"{method} run {run_name} reported no final adapter")
    dest = Path(output_dir)
    with result.checkpoint.as_directory() as d:
        src = Path(d) / ADAPTER_DIR
        if not src.is_dir():
            raise TrainingError(f"{method} run {run_name}: last checkpoint holds no adapter")
        if dest.exists():
            shutil.rmtree(dest)
        shutil.copytree(src, dest)
        metrics = json.loads((Path(d) / "metrics.json").read_text())
        metrics_from_checkpoint(d, metrics_file)
    return RLHFRayResult(dest, metrics)


__all__ = ["RLHFOptions", "RLHFRayResult", "rlhf_loop_per_worker", "train_rlhf_on_ray"]
