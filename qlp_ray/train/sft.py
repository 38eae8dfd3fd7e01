"""Supervised fine-tuning of one adapter with TRL's ``SFTTrainer`` (no Ray in here).

The same function runs in a plain process (unit tests) and inside every Ray Train worker
(``ray_train``: ``qlp train`` and every ``qlp tune`` trial), where the caller passes
``prepare`` (Ray's ``prepare_trainer``), a metrics-reporting callback, checkpoints and the
checkpoint to resume from. Data is TRL's prompt-completion format, so the loss covers the
completion only and TRL appends the tokenizer's EOS to every completion.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from qlp_ray.core.config import TrainConfig
from qlp_ray.core.errors import TrainingError
from qlp_ray.train.peft_setup import (
    AdaLoraAllocateCallback,
    build_peft_config,
    qlora_quantization_config,
    rank_pattern,
    unwrap_peft_model,
)

logger = logging.getLogger(__name__)

ADAPTER_FILES = ("adapter_model.safetensors", "adapter_config.json")


@dataclass
class SFTResult:
    """What one SFT run measured, and where its adapter went (None when not saved)."""

    adapter_dir: Path | None
    eval_loss_before: float
    eval_loss_after: float
    train_loss: float
    steps: int
    tokens: int
    tokens_per_s: float
    seconds: float
    world_size: int = 1
    rank_pattern: dict[str, int] | None = None
    init_state_sha256: str | None = None  # the adapter's starting weights (--init meta)

    def metrics(self) -> dict[str, Any]:
        """JSON-ready metrics (without the adapter path)."""
        out = asdict(self)
        out.pop("adapter_dir")
        for key in ("rank_pattern", "init_state_sha256"):
            if out[key] is None:
                out.pop(key)
        return out


def records_to_dataset(records: Sequence[dict[str, str]], what: str):
    """A ``datasets.Dataset`` of ``{"prompt", "completion"}`` rows; ``TrainingError`` if bad."""
    from datasets import Dataset

    if not records:
        raise TrainingError(f"the {what} data is empty")
    rows = []
    for i, rec in enumerate(records):
        prompt, completion = rec.get("prompt"), rec.get("completion")
        if not isinstance(prompt, str) or not isinstance(completion, str) or not completion.strip():
            raise TrainingError(
                f"{what} record {i} needs string 'prompt' and non-empty 'completion'"
            )
        rows.append({"prompt": prompt, "completion": completion})
    return Dataset.from_list(rows)


# train.lr_scheduler -> transformers' scheduler name (all with a linear warm-up)
SCHEDULERS = {"linear": "linear", "cosine": "cosine", "constant": "constant_with_warmup"}


def bf16_supported(use_cpu: bool) -> bool:
    """Whether this device trains in bf16: a CUDA GPU that supports it, or a CPU with
    AVX512-BF16 / AMX (torch's CPU capability AVX512 and up)."""
    import torch

    if not use_cpu and torch.cuda.is_available():
        return bool(torch.cuda.is_bf16_supported())
    flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").is_file() else ""
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_precision(precision: str, use_cpu: bool, model_dtype: str = "auto") -> str:
    """``train.precision`` -> ``"bf16"``, ``"fp16"`` or ``"fp32"``; ``TrainingError`` when
    bf16 is asked for on a device without it. ``auto`` follows ``model.dtype`` on a GPU
    (mixed precision in bf16 or fp16, :func:`qlp_ray.models.precision.trainer_flags`) and
    is fp32 on CPU, where bf16 autocast measured slower (benchmarks/sft_precision.py)."""
    if precision == "fp32":
        return "fp32"
    if precision == "bf16":
        if not bf16_supported(use_cpu):
            raise TrainingError(
                "train.precision=bf16, but this "
                + ("CPU has no AVX512-BF16/AMX" if use_cpu else "GPU does not support bf16")
            )
        return "bf16"
    from qlp_ray.models.precision import local_facts, trainer_flags

    flags = trainer_flags(model_dtype, local_facts(use_gpu=not use_cpu))
    return "bf16" if flags["bf16"] else "fp16" if flags["fp16"] else "fp32"


def build_sft_args(
    train_cfg: TrainConfig,
    output_dir: Path,
    *,
    max_seq_len: int,
    use_cpu: bool,
    checkpoints: bool = False,
    overrides: dict[str, Any] | None = None,
    model_dtype: str = "auto",
) -> Any:
    """Seeded ``SFTConfig`` of ``train_cfg``: no hub, no external loggers (MLflow runs are
    logged by the driver, :mod:`qlp_ray.train.tracking`).

    Every ``train.checkpoint_every`` steps the held-out loss is evaluated and, with
    ``checkpoints``, a resumable checkpoint saved. ``overrides`` replace single keys.
    ``model_dtype`` (``model.dtype``) sets the mixed precision on a GPU.
    """
    from trl import SFTConfig

    steps = train_cfg.steps
    precision = resolve_precision(train_cfg.precision, use_cpu, model_dtype)
    learning_rate = train_cfg.learning_rate
    if train_cfg.method == "adalora" and train_cfg.adalora.learning_rate is not None:
        learning_rate = train_cfg.adalora.learning_rate
    args: dict[str, Any] = dict(  # noqa: C408 - reads like the SFTConfig call it feeds
        output_dir=str(output_dir),
        max_steps=steps,
        per_device_train_batch_size=train_cfg.batch_size,
        per_device_eval_batch_size=max(train_cfg.batch_size, 16),
        learning_rate=learning_rate,
        gradient_accumulation_steps=train_cfg.grad_accum,
        warmup_steps=train_cfg.warmup_ratio,  # a float in [0, 1) is a ratio of max_steps
        lr_scheduler_type=SCHEDULERS[train_cfg.lr_scheduler],
        logging_steps=max(1, steps // 10),
        eval_strategy="no",  # held-out loss is also measured explicitly before and after
        save_strategy="no",  # the final adapter is saved by us, as safetensors
        report_to="none",
        use_cpu=use_cpu,
        bf16=precision == "bf16",
        fp16=precision == "fp16",
        gradient_checkpointing=False,
        max_length=max_seq_len,
        packing=False,
        completion_only_loss=True,
        include_num_input_tokens_seen="non_padding",
        dataloader_num_workers=0,
        ddp_find_unused_parameters=False,
        disable_tqdm=True,
        seed=train_cfg.seed,
        data_seed=train_cfg.seed,
    )
    every = train_cfg.checkpoint_every
    if every and every < steps:
        args.update(eval_strategy="steps", eval_steps=every, metric_for_best_model="eval_loss",
                    greater_is_better=False)  # fmt: skip
        if checkpoints:
            args.update(save_strategy="steps", save_steps=every, save_total_limit=2)
    return SFTConfig(**{**args, **(overrides or {})})


def _checkpoint_step(checkpoint: str | None) -> int:
    """The global step a trainer checkpoint was saved at (0 without one)."""
    if checkpoint is None:
        return 0
    state = json.loads((Path(checkpoint) / "trainer_state.json").read_text())
    return int(state.get("global_step", 0))


def _finite(value: Any, name: str) -> float:
    if value is None or not math.isfinite(float(value)):
        raise TrainingError(f"training produced a non-finite {name}: {value!r}")
    return float(value)


def adalora_orth_penalty(peft_model: Any) -> Any:
    """AdaLoRA's orthogonal regulariser: mean Frobenius norm of ``PPᵀ - I`` / ``QᵀQ - I``.

    The same term PEFT's ``AdaLoraModel.forward`` adds to ``outputs.loss``.
    """
    import torch

    adapter = peft_model.active_adapter
    total, count = None, 0
    for name, p in peft_model.named_parameters():
        if not (("lora_A" in name or "lora_B" in name) and f".{adapter}" in name):
            continue
        cov = p @ p.T if "lora_A" in name else p.T @ p
        eye = torch.eye(*cov.size(), dtype=cov.dtype, device=cov.device)
        term = torch.norm(cov - eye, p="fro")
        total = term if total is None else total + term
        count += 1
    if total is None:
        raise TrainingError("no AdaLoRA lora_A/lora_B parameters found for the orthogonal penalty")
    return total / count


def _trainer_class(method: str):
    """``SFTTrainer``, or for AdaLoRA a subclass that keeps the orthogonal regulariser.

    TRL 1.16 computes the SFT loss from fused per-token log-probs and ignores the
    model's own ``loss``, which is where PEFT adds AdaLoRA's orthogonal regulariser;
    without this the SVD factors P, Q are not kept orthogonal during training.
    """
    from trl import SFTTrainer

    if method != "adalora":
        return SFTTrainer

    class AdaLoraSFTTrainer(SFTTrainer):
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            result = super().compute_loss(
                model, inputs, return_outputs=return_outputs, num_items_in_batch=num_items_in_batch
            )
            if not model.training:
                return result  # held-out loss stays the plain completion loss
            loss, outputs = result if return_outputs else (result, None)
            peft_model = unwrap_peft_model(model)
            weight = peft_model.peft_config[peft_model.active_adapter].orth_reg_weight
            loss = loss + weight * adalora_orth_penalty(peft_model)
            return (loss, outputs) if return_outputs else loss

    return AdaLoraSFTTrainer


def load_sft_model(base_path: str | Path, train_cfg: TrainConfig) -> tuple[Any, Any]:
    """(model, tokenizer) of ``base_path`` for training: fp32, or the 4-bit QLoRA base."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(base_path))
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    torch.manual_seed(train_cfg.seed)
    if train_cfg.method == "qlora":  # build_peft_config checked CUDA + bitsandbytes
        from peft import prepare_model_for_kbit_training

        model = AutoModelForCausalLM.from_pretrained(
            str(base_path), quantization_config=qlora_quantization_config(), device_map={"": 0}
        )
        return prepare_model_for_kbit_training(model), tokenizer
    return AutoModelForCausalLM.from_pretrained(str(base_path), dtype=torch.float32), tokenizer


def build_sft_trainer(
    model: Any,
    tokenizer: Any,
    train_records: Sequence[dict[str, str]],
    eval_records: Sequence[dict[str, str]],
    train_cfg: TrainConfig,
    output_dir: Path,
    *,
    max_seq_len: int,
    use_cpu: bool = True,
    callbacks: Sequence[Any] = (),
    checkpoints: bool = False,
    args_overrides: dict[str, Any] | None = None,
    model_dtype: str = "auto",
) -> tuple[Any, AdaLoraAllocateCallback | None]:
    """The SFT trainer of every SFT run here (``qlp train`` and tuning trials), and for
    AdaLoRA the rank-allocation callback it runs (else None).

    The PEFT config, arguments, early stopping and trainer class all come from
    ``train_cfg``; an empty ``eval_records`` leaves the trainer without a held-out set.
    """
    from transformers import EarlyStoppingCallback

    train_ds = records_to_dataset(train_records, "training")
    eval_ds = records_to_dataset(eval_records, "held-out") if eval_records else None
    peft_config = build_peft_config(train_cfg, train_cfg.steps)
    all_callbacks = list(callbacks)
    allocator = None
    if train_cfg.method == "adalora":
        allocator = AdaLoraAllocateCallback()
        all_callbacks.insert(0, allocator)
    args = build_sft_args(
        train_cfg,
        output_dir,
        max_seq_len=max_seq_len,
        use_cpu=use_cpu,
        checkpoints=checkpoints,
        overrides=args_overrides,
        model_dtype=model_dtype,
    )
    if train_cfg.early_stopping_patience is not None and eval_ds is not None:
        # stops on the held-out loss of the evaluations every checkpoint_every steps; the
        # last adapter is kept (loading the best one would need rank 0's files on every rank)
        all_callbacks.append(EarlyStoppingCallback(train_cfg.early_stopping_patience))
    trainer = _trainer_class(train_cfg.method)(
        model=model,
        args=args,
        train_dataset=train_ds,
        eval_dataset=eval_ds,
        processing_class=tokenizer,
        peft_config=peft_config,
        callbacks=all_callbacks,
    )
    return trainer, allocator


def run_sft(
    base_path: str | Path,
    train_records: Sequence[dict[str, str]],
    eval_records: Sequence[dict[str, str]],
    train_cfg: TrainConfig,
    output_dir: str | Path,
    *,
    max_seq_len: int,
    callbacks: Sequence[Any] = (),
    prepare: Callable[[Any], Any] | None = None,
    save_adapter: bool = True,
    use_cpu: bool = True,
    checkpoints: bool = False,
    resume_from: str | None = None,
    eval_loss_before: float | None = None,
    init: dict[str, str] | None = None,
    model_dtype: str = "auto",
) -> SFTResult:
    """Fine-tune a LoRA/AdaLoRA adapter on ``base_path``; measure held-out loss before/after.

    ``output_dir/adapter`` receives ``adapter_model.safetensors`` + ``adapter_config.json``
    when ``save_adapter`` (in DDP only rank 0 should save). ``prepare`` wraps the trainer
    (e.g. Ray Train's ``prepare_trainer``); ``callbacks`` are extra ``TrainerCallback``s.
    ``checkpoints`` saves a checkpoint every ``train.checkpoint_every`` steps into
    ``output_dir/trainer``; ``resume_from`` (a checkpoint directory) continues a run, whose
    held-out loss before training was ``eval_loss_before`` (not measured again).
    ``init`` (``{"weights", "sha256"}``): start the adapter from these meta-init weights
    (:func:`qlp_ray.train.meta_init.apply_init`) instead of PEFT's default init.
    """
    output_dir = Path(output_dir)
    records_to_dataset(train_records, "training")  # bad data fails before the model loads
    records_to_dataset(eval_records, "held-out")
    build_peft_config(train_cfg, train_cfg.steps)
    model, tokenizer = load_sft_model(base_path, train_cfg)
    trainer, allocator = build_sft_trainer(
        model,
        tokenizer,
        train_records,
        eval_records,
        train_cfg,
        output_dir / "trainer",
        max_seq_len=max_seq_len,
        use_cpu=use_cpu,
        callbacks=callbacks,
        checkpoints=checkpoints,
        model_dtype=model_dtype,
    )
    init_state = None
    if init is not None:  # before the held-out loss "before": it measures the meta-init
        from qlp_ray.train.meta_init import apply_init

        init_state = apply_init(trainer.model, init["weights"], init["sha256"])
    if prepare is not None:
        trainer = prepare(trainer)

    t0 = time.perf_counter()
    if resume_from is None or eval_loss_before is None:
        before = _finite(trainer.evaluate()["eval_loss"], "held-out loss before training")
    else:
        before = eval_loss_before
    out = trainer.train(resume_from_checkpoint=resume_from)
    last_eval = [e for e in trainer.state.log_history if "eval_loss" in e][-1:]
    if last_eval and last_eval[0].get("step") == out.global_step:  # evaluated at the last step
        after = _finite(last_eval[0]["eval_loss"], "held-out loss after training")
    else:
        after = _finite(trainer.evaluate()["eval_loss"], "held-out loss after training")
    seconds = time.perf_counter() - t0

    train_seconds = float(out.metrics.get("train_runtime") or seconds)
    tokens = int(trainer.state.num_input_tokens_seen)
    pattern = rank_pattern(trainer.model) if allocator is not None else None
    trained_steps = out.global_step - _checkpoint_step(resume_from)
    if allocator is not None and allocator.calls != trained_steps:
        raise TrainingError(
            f"AdaLoRA rank allocation ran {allocator.calls} times for {trained_steps} steps"
        )
    result = SFTResult(
        adapter_dir=None,
        eval_loss_before=round(before, 5),
        eval_loss_after=round(after, 5),
        train_loss=round(_finite(out.training_loss, "training loss"), 5),
        steps=int(out.global_step),
        tokens=tokens,
        tokens_per_s=round(tokens / train_seconds, 1) if train_seconds > 0 else 0.0,
        seconds=round(seconds, 2),
        world_size=int(trainer.args.world_size),
        rank_pattern=pattern,
        init_state_sha256=init_state,
    )
    if save_adapter:
        result.adapter_dir = save_adapter_dir(trainer.model, output_dir / "adapter")
    logger.info(
        "SFT %s: %d steps, held-out loss %.4f -> %.4f, %.0f tokens/s, %.1f s",
        train_cfg.method,
        result.steps,
        before,
        after,
        result.tokens_per_s,
        seconds,
    )
    return result


def save_adapter_dir(model: Any, dest: Path) -> Path:
    """Save only ``adapter_model.safetensors`` + ``adapter_config.json`` into ``dest``."""
    peft_model = unwrap_peft_model(model)
    dest.mkdir(parents=True, exist_ok=True)
    peft_model.save_pretrained(str(dest), safe_serialization=True)
    for extra in dest.iterdir():  # save_pretrained also writes a README.md model card
        if extra.name not in ADAPTER_FILES:
            if extra.is_dir():
                raise TrainingError(f"unexpected directory {extra.name!r} in saved adapter")
            extra.unlink()
    missing = [name for name in ADAPTER_FILES if not (dest / name).is_file()]
    if missing:
        raise TrainingError(f"saving the adapter did not produce {', '.join(missing)}")
    return dest


__all__ = [
    "ADAPTER_FILES",
    "SCHEDULERS",
    "SFTResult",
    "adalora_orth_penalty",
    "build_sft_args",
    "build_sft_trainer",
    "load_sft_model",
    "records_to_dataset",
    "resolve_precision",
    "run_sft",
]
