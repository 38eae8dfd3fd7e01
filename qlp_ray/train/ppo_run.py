"""``qlp train --method ppo``: the runner :data:`qlp_ray.train.methods.METHODS` names for PPO.

Prompts (``{prompt}`` rows or capsules) and the ``--reward`` spec come from the method
table's checks (:mod:`qlp_ray.train.method_runs`); the run is :func:`train_ppo_on_ray`
with the ``train`` section's workers, steps, batch size, learning rate and LoRA shape.
Registration, signing and lineage are done by the caller.
"""

from __future__ import annotations

import time
from typing import Any

from qlp_ray.core.config import QLPConfig
from qlp_ray.train.method_runs import (
    MAX_COMPLETION,
    MethodRun,
    _items,
    _say,
    reward_function,
    run_metadata,
)
from qlp_ray.train.pipeline import TrainedAdapter
from qlp_ray.train.ppo_loop import PPOOptions
from qlp_ray.train.ray_ppo import train_ppo_on_ray


def run_ppo(cfg: QLPConfig, run: MethodRun) -> TrainedAdapter:
    """PPO on Ray Train; ``mean_reward`` and ``kl`` to the reference before and after."""
    from qlp_ray.models.base import resolve_base_path
    from qlp_ray.train.ray_train import effective_train_config

    tc = effective_train_config(
        cfg, workers=run.workers, steps=run.steps, overrides=run.overrides, method="lora"
    )
    train, held, routing = _items(run, cfg)
    assert run.reward is not None  # the method table requires --reward
    reward = reward_function(run.reward, run.domain, resolve_base_path(cfg), run.reward_model)
    options = PPOOptions(
        steps=tc.steps,
        batch_size=tc.batch_size,
        minibatch_size=max(1, tc.batch_size // 2),
        learning_rate=tc.learning_rate,
        max_new_tokens=MAX_COMPLETION,
        checkpoint_every=max(1, min(10, tc.steps // 2)),
        rank=tc.rank,
        alpha=tc.alpha,
        target_modules=tuple(tc.target_modules),
        seed=tc.seed,
    )
    run_dir = cfg.paths.runs / run.run_name
    run_dir.mkdir(parents=True, exist_ok=True)
    _say(run.progress, f"training {run.label or run.domain} (ppo, {tc.steps} steps) on Ray Train")
    t0 = time.perf_counter()
    result = train_ppo_on_ray(
        cfg,
        prompts=train,
        reward=reward,
        eval_prompts=held,
        options=options,
        workers=tc.workers,
        output_dir=run_dir / "adapter",
        run_name=run.run_name,
        cpus_per_worker=tc.cpus_per_worker,
        max_failures=int(getattr(tc, "max_failures", 1)),
        parent_path=run.parent.path if run.parent else None,
    )
    seconds = round(time.perf_counter() - t0, 2)
    m = result.metrics
    metrics: dict[str, Any] = {
        "mean_reward_before": m["reward_before"],
        "mean_reward_after": m["reward_after"],
        "kl_before": m["kl_before"],
        "kl_after": m["kl_after"],
        "train_reward_last": m.get("train_reward_last", float("nan")),
        "steps": tc.steps,
        "seconds": seconds,
    }
    _say(
        run.progress,
        f"held-out mean_reward {metrics['mean_reward_before']:.4f} -> "
        f"{metrics['mean_reward_after']:.4f} (KL to the reference {metrics['kl_after']:.3f})",
    )
    metadata = run_metadata(cfg, run, options, metrics, seconds=seconds, workers=tc.workers,
                            n_train=len(train), n_heldout=len(held), routing=routing,
                            resumed_from_step=m.get("resumed_from_step", 0.0))  # fmt: skip
    return TrainedAdapter(result.adapter_dir, metrics, metadata)


__all__ = ["run_ppo"]
