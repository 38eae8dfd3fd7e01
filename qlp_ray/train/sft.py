"""Supervised fine-tuning of one adapter with TRL's ``SFTTrainer`` (no Ray in here).

The same function runs in a plain process (unit tests) and inside every Ray Train worker
(``ray_train``), where the caller passes ``prepare`` (Ray's ``prepare_trainer``) and a
metrics-reporting callback. A Ray Tune trial (``train_sft_trial``, run by ``ray_rlhf``)
builds the same trainer and differs only in its callbacks and evaluation cadence. Data is
TRL's prompt-completion format, so the loss covers the completion only and TRL appends the
tokenizer's EOS to every completion.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from qlp_ray.core.config import TrainConfig
from qlp_ray.core.errors import TrainingError
from qlp_ray.train._rlhf_common import RunOptions
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

    def metrics(self) -> dict[str, Any]:
        """JSON-ready metrics (without the adapter path)."""
        out = asdict(self)
        out.pop("adapter_dir")
        if out["rank_pattern"] is None:
            out.pop("rank_pattern")
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


def build_sft_args(
    train_cfg: TrainConfig,
    output_dir: Path,
    *,
    max_seq_len: int,
    use_cpu: bool,
    overrides: dict[str, Any] | None = None,
) -> Any:
    """CPU-safe, seeded ``SFTConfig``: no checkpoints, no hub, no external loggers.

    ``overrides`` replace single ``SFTConfig`` keys (a tuning trial evaluates and saves
    every few steps so that Ray Tune sees a learning curve).
    """
    from trl import SFTConfig

    steps = train_cfg.steps
    learning_rate = train_cfg.learning_rate
    if train_cfg.method == "adalora" and train_cfg.adalora.learning_rate is not None:
        learning_rate = train_cfg.adalora.learning_rate
    args: dict[str, Any] = dict(  # noqa: C408 - reads like the SFTConfig call it feeds
        output_dir=str(output_dir),
        max_steps=steps,
        per_device_train_batch_size=train_cfg.batch_size,
        per_device_eval_batch_size=max(train_cfg.batch_size, 16),
        learning_rate=learning_rate,
        warmup_steps=train_cfg.warmup_ratio,  # a float in [0, 1) is a ratio of max_steps
        lr_scheduler_type="linear",
        logging_steps=max(1, steps // 10),
        eval_strategy="no",  # held-out loss is measured explicitly before and after
        save_strategy="no",  # the adapter is saved once, by us, as safetensors
        report_to="none",
        use_cpu=use_cpu,
        bf16=False,
        fp16=False,
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
    return SFTConfig(**{**args, **(overrides or {})})


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
    args_overrides: dict[str, Any] | None = None,
) -> tuple[Any, AdaLoraAllocateCallback | None]:
    """The SFT trainer of every SFT run here (production and tuning trials), and for
    AdaLoRA the rank-allocation callback it runs (else None).

    The PEFT config, arguments and trainer class all come from ``train_cfg``; an empty
    ``eval_records`` leaves the trainer without a held-out set.
    """
    train_ds = records_to_dataset(train_records, "training")
    eval_ds = records_to_dataset(eval_records, "held-out") if eval_records else None
    peft_config = build_peft_config(train_cfg, train_cfg.steps)
    all_callbacks = list(callbacks)
    allocator = None
    if train_cfg.method == "adalora":
        allocator = AdaLoraAllocateCallback()
        all_callbacks.insert(0, allocator)
    args = build_sft_args(
        train_cfg, output_dir, max_seq_len=max_seq_len, use_cpu=use_cpu, overrides=args_overrides
    )
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
) -> SFTResult:
    """Fine-tune a LoRA/AdaLoRA adapter on ``base_path``; measure held-out loss before/after.

    ``output_dir/adapter`` receives ``adapter_model.safetensors`` + ``adapter_config.json``
    when ``save_adapter`` (in DDP only rank 0 should save). ``prepare`` wraps the trainer
    (e.g. Ray Train's ``prepare_trainer``); ``callbacks`` are extra ``TrainerCallback``s.
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
    )
    if prepare is not None:
        trainer = prepare(trainer)

    t0 = time.perf_counter()
    before = _finite(trainer.evaluate()["eval_loss"], "held-out loss before training")
    out = trainer.train()
    after = _finite(trainer.evaluate()["eval_loss"], "held-out loss after training")
    seconds = time.perf_counter() - t0

    train_seconds = float(out.metrics.get("train_runtime") or seconds)
    tokens = int(trainer.state.num_input_tokens_seen)
    pattern = rank_pattern(trainer.model) if allocator is not None else None
    if allocator is not None and allocator.calls != out.global_step:
        raise TrainingError(
            f"AdaLoRA rank allocation ran {allocator.calls} times for {out.global_step} steps"
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


@dataclass
class SFTTrialResult:
    """A tuning trial's adapted model, training loss and trainer metrics (incl. ``eval_loss``)."""

    model: Any
    train_loss: float
    metrics: dict[str, float]


def train_sft_trial(
    model: Any,
    tokenizer: Any,
    records: Sequence[dict[str, str]],
    *,
    output_dir: str,
    eval_records: Sequence[dict[str, str]] = (),
    steps: int = 40,
    batch_size: int = 8,
    learning_rate: float = 2e-3,
    dropout: float = 0.05,
    max_length: int = 256,
    run: RunOptions = RunOptions(),
) -> SFTTrialResult:
    """One LoRA SFT tuning trial through :func:`build_sft_trainer`, the trainer of ``run_sft``.

    It differs from a production run only in its hooks: ``run`` brings the Ray Train
    ``prepare``, the reporting callbacks, checkpoint resume and ``extra_args`` (evaluate and
    save every few steps, so ASHA can stop weak trials and Optuna sees a learning curve);
    there is no held-out measurement before training, and the final one only with
    ``eval_records``.
    """
    import torch

    train_cfg = TrainConfig(
        method="lora",
        rank=run.rank,
        alpha=run.alpha,
        dropout=dropout,
        target_modules=list(run.target_modules),
        steps=steps,
        batch_size=batch_size,
        learning_rate=learning_rate,
        warmup_ratio=run.warmup_ratio,
        seed=run.seed,
    )
    overrides = {
        "lr_scheduler_type": run.lr_scheduler_type,
        "gradient_accumulation_steps": run.grad_accum,
        **(run.extra_args or {}),
    }
    trainer, _ = build_sft_trainer(
        model,
        tokenizer,
        records,
        eval_records,
        train_cfg,
        Path(output_dir),
        max_seq_len=max_length,
        use_cpu=not torch.cuda.is_available(),
        callbacks=run.callbacks,
        args_overrides=overrides,
    )
    trainer, out = run.fit(trainer)
    metrics = dict(out.metrics)
    if eval_records:
        metrics.update(trainer.evaluate())
    return SFTTrialResult(trainer.model, float(out.training_loss), metrics)


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
    "SFTResult",
    "SFTTrialResult",
    "adalora_orth_penalty",
    "build_sft_args",
    "build_sft_trainer",
    "load_sft_model",
    "records_to_dataset",
    "run_sft",
    "train_sft_trial",
]
