"""``train``: LoRA / AdaLoRA training runs (read by ``qlp_ray.train``)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from qlp_ray.core.config.base import Section


class AdaLoraConfigSection(Section):
    init_r: int = Field(12, ge=1, description="Initial rank of every AdaLoRA matrix.")
    target_r: int = Field(4, ge=1, description="Average rank AdaLoRA prunes down to.")
    tinit: int = Field(5, ge=0, description="Warm-up steps before rank pruning starts.")
    tfinal: int = Field(5, ge=0, description="Final steps with a frozen rank pattern.")
    delta_t: int = Field(2, ge=1, description="Steps between two rank reallocations.")
    # Measured on the tiny model (ml samples, 20 steps): held-out loss 0.383 -> 0.382 at
    # lr 2e-3 with PEFT's default orth_reg_weight 0.5, -> 0.373 at lr 1e-2 with 0.1. AdaLoRA's
    # singular values start at zero and need a larger step than LoRA in short runs.
    learning_rate: float | None = Field(
        1e-2, gt=0, description="Peak learning rate of AdaLoRA runs (None = train.learning_rate)."
    )
    orth_reg_weight: float = Field(
        0.1, ge=0, description="Weight of AdaLoRA's orthogonal regulariser on P and Q."
    )


class PPOConfigSection(Section):
    """PPO (``qlp train --method ppo``); steps, batch size (prompts sampled per step and
    worker), learning rate, schedule and LoRA shape come from ``train``."""

    kl_coef: float = Field(
        0.2, ge=0, description="Weight of the per-token KL penalty to the reference policy."
    )
    kl_target: float | None = Field(
        None,
        gt=0,
        description="Adaptive KL control: steer the per-completion KL towards this (nats); "
        "None = a fixed kl_coef.",
    )
    kl_horizon: int = Field(10_000, ge=1, description="Horizon of the adaptive KL controller.")
    clip_range: float = Field(0.2, gt=0, lt=1, description="PPO ratio clip (epsilon).")
    value_clip: float = Field(
        0.2, gt=0, description="Clip of the value update around the old value."
    )
    vf_coef: float = Field(0.5, ge=0, description="Weight of the value loss.")
    gamma: float = Field(1.0, gt=0, le=1, description="Discount of GAE.")
    lam: float = Field(0.95, ge=0, le=1, description="Lambda of GAE.")
    ppo_epochs: int = Field(2, ge=1, description="Passes over each rollout batch.")
    minibatch_size: int | None = Field(
        None, ge=1, description="Sequences per PPO minibatch; None = half the batch."
    )
    max_new_tokens: int = Field(16, ge=1, description="Tokens sampled per completion.")
    temperature: float = Field(1.0, gt=0, description="Sampling temperature of the rollouts.")
    max_grad_norm: float = Field(1.0, gt=0, description="Gradient-norm clip per optimiser step.")


class MetaInitSection(Section):
    """``qlp train --init meta``: Reptile over the registry's domains (``train.meta_init``)."""

    rounds: int = Field(24, ge=1, description="Reptile rounds (one domain each, in turn).")
    inner_steps: int = Field(5, ge=1, description="Adam steps adapting to a domain per round.")
    inner_lr: float = Field(5e-3, gt=0, description="Learning rate of the inner steps.")
    meta_lr: float = Field(
        0.5, gt=0, le=1, description="Reptile step toward the adapted weights (annealed to 0)."
    )
    batch_size: int = Field(8, ge=1, description="Texts per inner step.")
    max_texts_per_domain: int = Field(
        256, ge=1, description="Training texts read per source domain (the first N)."
    )


class TrainConfig(Section):
    method: Literal["lora", "adalora", "qlora"] = Field(
        "lora", description="PEFT method (qlora: 4-bit base via bitsandbytes, CUDA only)."
    )
    rank: int = Field(8, ge=1, description="LoRA rank r.")
    alpha: int = Field(16, ge=1, description="LoRA scaling alpha.")
    dropout: float = Field(0.05, ge=0, lt=1, description="LoRA dropout.")
    target_modules: list[str] = Field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"],
        description="Module names that get adapters.",
    )
    steps: int = Field(60, ge=1, description="Optimizer steps per training run.")
    batch_size: int = Field(8, ge=1, description="Per-worker batch size.")
    learning_rate: float = Field(2e-3, gt=0, description="Peak learning rate.")
    warmup_ratio: float = Field(0.05, ge=0, lt=1, description="Linear warm-up share of steps.")
    lr_scheduler: Literal["linear", "cosine", "constant"] = Field(
        "linear", description="Learning-rate decay after the warm-up (constant: none)."
    )
    grad_accum: int = Field(
        1, ge=1, description="Gradient accumulation: micro-batches per optimizer step."
    )
    checkpoint_every: int = Field(
        20,
        ge=0,
        description="Steps between checkpoints (adapter, optimizer, scheduler, step) that a "
        "restarted worker resumes from, and between held-out evaluations; 0 = neither (held-out "
        "loss only before and after training).",
    )
    early_stopping_patience: int | None = Field(
        None,
        ge=1,
        description="Stop when the held-out loss has not improved for this many evaluations "
        "(every `checkpoint_every` steps); None = train all steps.",
    )
    max_failures: int = Field(
        1, ge=0, description="Restarts of a failed worker group (Ray Train FailureConfig)."
    )
    precision: Literal["auto", "fp32", "bf16"] = Field(
        "auto",
        description="Training precision: bf16 autocast, fp32, or auto (on a GPU: mixed "
        "precision in `model.dtype`, bf16 or fp16; fp32 on CPU, where bf16 measured slower: "
        "benchmarks/sft_precision.py).",
    )
    workers: int = Field(1, ge=1, description="Ray Train workers (DDP, gloo on CPU).")
    cpus_per_worker: float = Field(1.0, gt=0, description="CPUs reserved per Ray Train worker.")
    resources_per_worker: dict[str, float] = Field(
        default_factory=dict,
        description="Custom Ray resources per Ray Train worker of an SFT run, e.g. "
        "{qlp_cuda: 1} or a label resource a node advertises, to pin where it trains.",
    )
    storage_uri: str = Field(
        "",
        description="Checkpoints and results of Ray Train / Tune runs: '' = <home>/runs (one "
        "node), s3://bucket/prefix (the s3 section's endpoint) or a path every node mounts.",
    )
    placement_timeout_s: float = Field(
        120.0,
        ge=0,
        description="Longest a training run waits for the scheduler to find its CPUs (it "
        "logs why it waits), then fails with the reason.",
    )
    use_gpu: bool | None = Field(None, description="Train on GPUs; None = when any is present.")
    eval_fraction: float = Field(
        0.15, gt=0, lt=1, description="Held-out share when the data has no held-out split."
    )
    seed: int = Field(0, description="Seed for data order and adapter init.")
    adalora: AdaLoraConfigSection = Field(
        default_factory=AdaLoraConfigSection, description="AdaLoRA runs (method: adalora)."
    )
    meta_init: MetaInitSection = Field(
        default_factory=MetaInitSection, description="Meta-learned LoRA init (--init meta)."
    )
    ppo: PPOConfigSection = Field(
        default_factory=PPOConfigSection, description="PPO runs (qlp train --method ppo)."
    )

    @model_validator(mode="after")
    def _early_stopping_evaluates(self) -> TrainConfig:
        if self.early_stopping_patience is not None and self.checkpoint_every == 0:
            raise ValueError(
                "`train.early_stopping_patience` needs held-out evaluations: set "
                "`train.checkpoint_every` > 0."
            )
        return self

    @model_validator(mode="after")
    def _adalora_schedule(self) -> TrainConfig:
        a = self.adalora
        if self.method == "adalora" and not a.tinit < self.steps - a.tfinal:
            raise ValueError(
                f"AdaLoRA needs `train.adalora.tinit` ({a.tinit}) < `train.steps` ({self.steps})"
                f" - `train.adalora.tfinal` ({a.tfinal})."
            )
        return self
