"""Shared pieces of the preference/RL/distillation trainers (DPO, GRPO, RLOO, distill)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any


def device_args(model_dtype: str = "auto") -> dict[str, Any]:
    """TRL config flags for the current device: fp32 on CPU; on a GPU mixed precision in
    ``model.dtype`` (``auto``: bf16 where the GPU supports it, else fp16;
    :mod:`qlp_ray.models.precision`).

    TRL configs default to bf16 and gradient checkpointing; on CPU both only cost time.
    """
    from qlp_ray.models.precision import local_facts, trainer_flags

    facts = local_facts()
    if facts.device == "cuda":
        return {**trainer_flags(model_dtype, facts), "gradient_checkpointing": False}
    return {"use_cpu": True, "bf16": False, "fp16": False, "gradient_checkpointing": False}


def common_args(
    *,
    output_dir: str,
    steps: int,
    batch_size: int,
    learning_rate: float,
    seed: int,
    warmup_ratio: float = 0.0,
    lr_scheduler_type: str = "linear",
    grad_accum: int = 1,
    model_dtype: str = "auto",
) -> dict[str, Any]:
    """Keyword arguments every TRL config here shares."""
    return {
        "output_dir": output_dir,
        "max_steps": steps,
        "per_device_train_batch_size": batch_size,
        "gradient_accumulation_steps": grad_accum,
        "learning_rate": learning_rate,
        "lr_scheduler_type": lr_scheduler_type,
        "warmup_steps": int(warmup_ratio * steps),
        "logging_steps": max(1, steps // 10),
        "save_strategy": "no",
        "report_to": "none",
        "seed": seed,
        "disable_tqdm": True,
        **device_args(model_dtype),
    }


def lora_config(
    *,
    rank: int = 8,
    alpha: int = 16,
    dropout: float = 0.0,
    target_modules: Sequence[str] = ("q_proj", "k_proj", "v_proj", "o_proj"),
) -> Any:
    from peft import LoraConfig

    return LoraConfig(
        r=rank,
        lora_alpha=alpha,
        lora_dropout=dropout,
        target_modules=list(target_modules),
        task_type="CAUSAL_LM",
    )


def sequence_logprob(model: Any, tokenizer: Any, prompt: str, completion: str) -> float:
    """Sum of log p(completion tokens | prompt) under ``model``."""
    import torch

    device = next(model.parameters()).device
    p_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    c_ids = tokenizer(completion, add_special_tokens=False)["input_ids"]
    ids = torch.tensor([p_ids + c_ids], device=device)
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0, :-1].float()
    logp = torch.log_softmax(logits, -1)
    targets = ids[0, 1:]
    token_lp = logp.gather(-1, targets[:, None])[:, 0]
    return float(token_lp[len(p_ids) - 1 :].sum())


@dataclass(frozen=True)
class RunOptions:
    """What every TRL wrapper here (DPO, GRPO/RLOO, distillation, the SFT tuning trial)
    takes besides its data and method knobs: LoRA shape, schedule, seed and trainer hooks.

    ``extra_args`` override the TRL config keys; ``prepare`` wraps the trainer (e.g.
    ``ray.train.huggingface.transformers.prepare_trainer``); ``resume_from_checkpoint``
    restarts from a saved checkpoint.
    """

    rank: int = 8
    alpha: int = 16
    target_modules: Sequence[str] = ("q_proj", "k_proj", "v_proj", "o_proj")
    warmup_ratio: float = 0.0
    lr_scheduler_type: str = "linear"
    grad_accum: int = 1
    seed: int = 0
    callbacks: Sequence[Any] = ()
    extra_args: dict[str, Any] | None = None
    prepare: Callable[[Any], Any] | None = None
    resume_from_checkpoint: str | None = None
    new_adapter: bool = True  # False: the model already is a trainable PeftModel (a parent)
    model_dtype: str = "auto"  # ``model.dtype``: the mixed precision on a GPU

    def trl_args(
        self, *, output_dir: str, steps: int, batch_size: int, learning_rate: float
    ) -> dict[str, Any]:
        """:func:`common_args` for this run, then ``extra_args`` on top."""
        return {
            **common_args(
                output_dir=output_dir,
                steps=steps,
                batch_size=batch_size,
                learning_rate=learning_rate,
                seed=self.seed,
                warmup_ratio=self.warmup_ratio,
                lr_scheduler_type=self.lr_scheduler_type,
                grad_accum=self.grad_accum,
                model_dtype=self.model_dtype,
            ),
            **(self.extra_args or {}),
        }

    def lora(self, dropout: float = 0.0) -> Any:
        """The LoRA config to wrap the model with; None when it already carries its adapter."""
        if not self.new_adapter:
            return None
        return lora_config(
            rank=self.rank, alpha=self.alpha, dropout=dropout, target_modules=self.target_modules
        )

    def fit(self, trainer: Any) -> Any:
        """Apply ``prepare``, train (resuming when asked); returns ``(trainer, output)``."""
        if self.prepare is not None:
            trainer = self.prepare(trainer)
        return trainer, trainer.train(resume_from_checkpoint=self.resume_from_checkpoint)
