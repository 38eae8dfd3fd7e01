"""Reinforcement learning from rewards: TRL ``GRPOTrainer`` and ``RLOOTrainer``.

Critic-free relatives of PPO (qlp_ray's own PPO, with a value head, is
:mod:`qlp_ray.train.ppo`; TRL no longer ships one). GRPO and RLOO keep PPO's
clipped policy-ratio objective (``epsilon``) but replace
the learned critic with a baseline computed from several sampled completions
per prompt: the group mean (GRPO, with per-group reward normalisation) or the
leave-one-out mean of the other samples (RLOO). A KL penalty to the reference
policy (``beta``) is optional, as in PPO-RLHF.

Rewards come from :mod:`qlp_ray.train.rewards`: a reward model trained with
``RewardTrainer``, programmatic validators per domain, and the feedback
mapping. The policy is trained as a LoRA adapter.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from qlp_ray.core.errors import InvalidRequest
from qlp_ray.train._rlhf_common import RunOptions

logger = logging.getLogger(__name__)

Algorithm = Literal["grpo", "rloo"]


@dataclass
class RLResult:
    model: Any  # PeftModel with the trained adapter
    train_loss: float
    metrics: dict[str, float]
    reward_history: list[float]  # mean reward logged during training


def train_rl(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[str],
    reward_funcs: Sequence[Any],
    *,
    output_dir: str,
    algorithm: Algorithm = "grpo",
    steps: int = 30,
    batch_size: int = 8,
    num_generations: int = 4,
    max_completion_length: int = 8,
    learning_rate: float = 5e-3,
    beta: float = 0.0,
    temperature: float = 1.0,
    reward_weights: Sequence[float] | None = None,
    run: RunOptions = RunOptions(),
) -> RLResult:
    """Optimise a LoRA policy on ``prompts`` for the summed ``reward_funcs``.

    ``batch_size`` counts completions per step and must be a multiple of
    ``num_generations`` (completions sampled per prompt for the baseline).
    """
    from datasets import Dataset

    if not prompts:
        raise InvalidRequest("RL needs at least one prompt")
    if not reward_funcs:
        raise InvalidRequest("RL needs at least one reward function")
    if num_generations < 2:
        raise InvalidRequest(f"num_generations must be >= 2 for a baseline, got {num_generations}")
    if batch_size % num_generations:
        raise InvalidRequest(
            f"batch_size ({batch_size}) must be a multiple of num_generations ({num_generations})"
        )
    if algorithm == "grpo":
        from trl import GRPOConfig as Config
        from trl import GRPOTrainer as Trainer
    elif algorithm == "rloo":
        from trl import RLOOConfig as Config
        from trl import RLOOTrainer as Trainer
    else:
        raise InvalidRequest(f"algorithm must be 'grpo' or 'rloo', got {algorithm!r}")

    args = Config(
        num_generations=num_generations,
        max_completion_length=max_completion_length,
        temperature=temperature,
        beta=beta,
        reward_weights=list(reward_weights) if reward_weights is not None else None,
        **run.trl_args(
            output_dir=output_dir, steps=steps, batch_size=batch_size, learning_rate=learning_rate
        ),
    )
    # a raw sequence-classification model may be passed too; it scores with this tokenizer
    reward_processing = [tokenizer if hasattr(f, "config") else None for f in reward_funcs]
    trainer = Trainer(
        model=model,
        reward_funcs=list(reward_funcs),
        args=args,
        train_dataset=Dataset.from_list([{"prompt": p} for p in prompts]),
        processing_class=tokenizer,
        reward_processing_classes=reward_processing,
        peft_config=run.lora(),
        callbacks=list(run.callbacks),
    )
    trainer, out = run.fit(trainer)
    rewards = [float(h["reward"]) for h in trainer.state.log_history if "reward" in h]
    logger.info(
        "%s: %d prompts, %d steps, reward %s -> %s",
        algorithm.upper(),
        len(prompts),
        steps,
        f"{rewards[0]:.3f}" if rewards else "n/a",
        f"{rewards[-1]:.3f}" if rewards else "n/a",
    )
    return RLResult(trainer.model, float(out.training_loss), dict(out.metrics), rewards)


def mean_reward(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[str],
    reward_func: Any,
    *,
    samples_per_prompt: int = 4,
    max_new_tokens: int = 8,
    temperature: float = 1.0,
    seed: int = 0,
) -> float:
    """Mean reward of sampled completions on ``prompts`` (seeded, for held-out evaluation)."""
    import torch

    if not prompts:
        raise InvalidRequest("no prompts to evaluate")
    device = next(model.parameters()).device
    gen = torch.Generator().manual_seed(seed)
    was_training = model.training
    model.eval()
    completions, expanded = [], []
    try:
        with torch.no_grad():
            for prompt in prompts:
                enc = tokenizer(prompt, return_tensors="pt").to(device)
                torch.manual_seed(int(torch.randint(0, 2**31 - 1, (1,), generator=gen)))
                out = model.generate(
                    **enc,
                    do_sample=True,
                    temperature=temperature,
                    top_k=0,
                    max_new_tokens=max_new_tokens,
                    num_return_sequences=samples_per_prompt,
                    pad_token_id=tokenizer.pad_token_id,
                )
                new = out[:, enc["input_ids"].shape[1] :]
                completions += tokenizer.batch_decode(new, skip_special_tokens=True)
                expanded += [prompt] * samples_per_prompt
    finally:
        model.train(was_training)
    scores = reward_func(prompts=expanded, completions=completions)
    return float(sum(scores) / len(scores))


__all__ = ["RLResult", "mean_reward", "train_rl"]
