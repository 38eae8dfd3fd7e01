"""``qlp train --method ppo``: the runner :data:`qlp_ray.train.methods.METHODS` names for PPO.

Prompts (``{prompt}`` rows or capsules) and the ``--reward`` spec come from the method
table's checks (:mod:`qlp_ray.train.method_runs`); the run is :func:`train_ppo_on_ray`
with the ``train`` section's workers, steps, batch size, learning rate, schedule,
``checkpoint_every`` and LoRA shape, and the PPO knobs of ``train.ppo`` (:func:`ppo_options`).
It is an MLflow run (params, per-step reward / KL / losses) and writes its curve into the
run directory. Registration, signing and lineage are done by the caller.
"""

from __future__ import annotations

import time
from dataclasses import asdict
from typing import Any

from qlp_ray.core.config import QLPConfig
from qlp_ray.core.config.train import TrainConfig
from qlp_ray.train import tracking
from qlp_ray.train.method_runs import (
    MethodRun,
    _items,
    _say,
    reward_function,
    run_metadata,
)
from qlp_ray.train.pipeline import TrainedAdapter
from qlp_ray.train.ppo_loop import PPOOptions
from qlp_ray.train.ray_ppo import train_ppo_on_ray
from qlp_ray.train.run_metrics import METRICS_FILE, write_loss_curve


def ppo_options(tc: TrainConfig) -> PPOOptions:
    """:class:`PPOOptions` of an effective ``train`` config (``train.ppo`` for the PPO knobs;
    ``checkpoint_every: 0`` = no checkpoint before the final one)."""
    p = tc.ppo
    every = tc.checkpoint_every
    return PPOOptions(
        steps=tc.steps,
        batch_size=tc.batch_size,
        minibatch_size=p.minibatch_size or max(1, tc.batch_size // 2),
        learning_rate=tc.learning_rate,
        lr_scheduler=tc.lr_scheduler,
        warmup_ratio=tc.warmup_ratio,
        ppo_epochs=p.ppo_epochs,
        clip=p.clip_range,
        value_clip=p.value_clip,
        vf_coef=p.vf_coef,
        gamma=p.gamma,
        lam=p.lam,
        kl_coef=p.kl_coef,
        kl_target=p.kl_target,
        kl_horizon=p.kl_horizon,
        max_grad_norm=p.max_grad_norm,
        temperature=p.temperature,
        max_new_tokens=p.max_new_tokens,
        checkpoint_every=min(every, tc.steps) if every > 0 else tc.steps,
        rank=tc.rank,
        alpha=tc.alpha,
        target_modules=tuple(tc.target_modules),
        seed=tc.seed,
    )


def run_ppo(cfg: QLPConfig, run: MethodRun) -> TrainedAdapter:
    """PPO on Ray Train; ``mean_reward`` and ``kl`` to the reference before and after."""
    from qlp_ray.train.node_files import base_model_ref
    from qlp_ray.train.ray_train import effective_train_config

    tc = effective_train_config(
        cfg, workers=run.workers, steps=run.steps, overrides=run.overrides, method="lora"
    )
    train, held, routing = _items(run, cfg)
    assert run.reward is not None  # the method table requires --reward
    reward = reward_function(run.reward, run.domain, base_model_ref(cfg), run.reward_model)
    options = ppo_options(tc)
    run_dir = cfg.paths.runs / run.run_name
    run_dir.mkdir(parents=True, exist_ok=True)
    _say(run.progress, f"training {run.label or run.domain} (ppo, {tc.steps} steps) on Ray Train")
    t0 = time.perf_counter()
    tracked = tracking.start_run(  # MLflow: params now, the steps' stats at each checkpoint
        cfg,
        run.run_name,
        {"train": {**asdict(options), "target_modules": list(options.target_modules)},
         "method": "ppo", "domain": run.domain, "data_path": str(run.data_path),
         "reward": run.reward.as_text()},
        tags={"qlp.domain": run.domain, "qlp.method": "ppo"},
    )  # fmt: skip
    try:
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
            max_failures=tc.max_failures,
            parent_path=run.parent.path if run.parent else None,
            metrics_file=run_dir / METRICS_FILE,
            tracking_run=tracked,
        )
    except BaseException:
        tracking.finish_run(tracked, failed=True)
        raise
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
    title = f"{run.run_name} (ppo, {tc.steps} steps)"
    write_loss_curve(run_dir, title=title, extra_keys=("reward", "kl"))
    tracking.finish_run(tracked, metrics=metrics)
    if tracked is not None:
        metadata["mlflow_run_id"] = tracked[1]
    return TrainedAdapter(result.adapter_dir, metrics, metadata, tracked)


__all__ = ["ppo_options", "run_ppo"]
