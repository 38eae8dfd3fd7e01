"""PEFT configuration for adapter training: LoRA or AdaLoRA, plus AdaLoRA's rank-allocation hook.

TRL's ``SFTTrainer`` never calls AdaLoRA's ``update_and_allocate``; without it AdaLoRA is
plain LoRA with an SVD parametrisation. :class:`AdaLoraAllocateCallback` calls it right
after every optimizer step, while the gradients the importance scores need still exist
(``on_step_end`` runs after ``zero_grad`` and would be too late).
"""

from __future__ import annotations

import logging
from typing import Any

from peft import AdaLoraConfig, LoraConfig, PeftConfig, TaskType
from transformers import TrainerCallback

from qlp_ray.core.config import TrainConfig
from qlp_ray.core.errors import ConfigError
from qlp_ray.train import methods_phrase

logger = logging.getLogger(__name__)


def qlora_unavailable_reason() -> str | None:
    """Why QLoRA (4-bit bitsandbytes base) cannot run here, or ``None`` when it can."""
    import importlib.util

    import torch

    if not torch.cuda.is_available():
        return "no CUDA GPU is available (bitsandbytes 4-bit training is GPU-only)"
    if importlib.util.find_spec("bitsandbytes") is None:
        return "bitsandbytes is not installed (pip install 'qlp_ray[gpu]')"
    return None


def qlora_quantization_config():
    """NF4 4-bit weights with bf16 compute, the QLoRA recipe."""
    import torch
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=torch.bfloat16,
    )


def build_peft_config(train_cfg: TrainConfig, total_steps: int) -> PeftConfig:
    """A causal-LM ``LoraConfig`` or ``AdaLoraConfig`` from ``train_cfg``.

    ``total_steps`` is the number of optimizer steps of the run (AdaLoRA's ``total_step``).
    Raises ``ConfigError`` naming the offending ``train.*`` option.
    """
    if total_steps < 1:
        raise ConfigError(f"`train.steps` must be >= 1, got {total_steps}")
    if not train_cfg.target_modules:
        raise ConfigError("`train.target_modules` is empty: name at least one module (e.g. q_proj)")
    common: dict[str, Any] = {
        "task_type": TaskType.CAUSAL_LM,
        "target_modules": list(train_cfg.target_modules),
        "lora_alpha": train_cfg.alpha,
        "lora_dropout": train_cfg.dropout,
    }
    if train_cfg.method == "lora":
        return LoraConfig(r=train_cfg.rank, **common)
    if train_cfg.method == "qlora":
        reason = qlora_unavailable_reason()
        if reason is not None:
            raise ConfigError(f"`train.method` is 'qlora' but {reason}; use 'lora' on CPU")
        return LoraConfig(r=train_cfg.rank, **common)
    if train_cfg.method == "adalora":
        a = train_cfg.adalora
        if not a.tinit < total_steps - a.tfinal:
            raise ConfigError(
                f"AdaLoRA needs `train.adalora.tinit` ({a.tinit}) < `train.steps` ({total_steps})"
                f" - `train.adalora.tfinal` ({a.tfinal}): no steps are left for rank allocation."
            )
        if a.target_r > a.init_r:
            raise ConfigError(
                f"`train.adalora.target_r` ({a.target_r}) must not exceed "
                f"`train.adalora.init_r` ({a.init_r})."
            )
        return AdaLoraConfig(
            init_r=a.init_r,
            target_r=a.target_r,
            tinit=a.tinit,
            tfinal=a.tfinal,
            deltaT=a.delta_t,
            orth_reg_weight=a.orth_reg_weight,
            total_step=total_steps,
            **common,
        )
    raise ConfigError(f"`train.method` must be {methods_phrase()}, got {train_cfg.method!r}")


def unwrap_peft_model(model: Any) -> Any:
    """The ``PeftModel`` inside DDP / accelerate wrappers (``.module`` chains)."""
    while hasattr(model, "module") and not hasattr(model, "peft_config"):
        model = model.module
    return model


class AdaLoraAllocateCallback(TrainerCallback):
    """Runs AdaLoRA's importance-based rank reallocation after each optimizer step."""

    def __init__(self) -> None:
        self.calls = 0

    def on_optimizer_step(self, args, state, control, model=None, **kwargs):  # noqa: D401
        if model is None:
            return control
        peft_model = unwrap_peft_model(model)
        tuner = getattr(peft_model, "base_model", None)
        if tuner is None or not hasattr(tuner, "update_and_allocate"):
            raise TypeError(
                "AdaLoraAllocateCallback needs an AdaLoRA PeftModel, "
                f"got {type(peft_model).__name__}"
            )
        # state.global_step still counts the steps *before* this one (0-based here).
        tuner.update_and_allocate(state.global_step)
        self.calls += 1
        return control


def rank_pattern(model: Any) -> dict[str, int] | None:
    """Kept rank per AdaLoRA module (``{module: rank}``), or None for LoRA / before allocation."""
    peft_model = unwrap_peft_model(model)
    adapter = getattr(peft_model, "active_adapter", "default")
    pattern = getattr(peft_model.peft_config[adapter], "rank_pattern", None)
    if not pattern:
        return None
    return {
        _module_name(name, adapter): int(sum(map(bool, mask))) for name, mask in pattern.items()
    }


def _module_name(param_name: str, adapter: str) -> str:
    """``base_model.model.model.layers.0.self_attn.q_proj.lora_E.default`` → ``model.layers.0…``."""
    name = param_name.removeprefix("base_model.model.")
    name = name.removesuffix(f".{adapter}")
    return name.removesuffix(".lora_E")


__all__ = [
    "AdaLoraAllocateCallback",
    "build_peft_config",
    "rank_pattern",
    "unwrap_peft_model",
]
