"""PPO on Ray Train (2 workers, one killed mid-run): the held-out reward rises, the KL to
the reference stays bounded, and the restarted worker group resumes from its checkpoint."""

from __future__ import annotations

import uuid

import pytest

from qlp_ray.train.ppo_loop import PPOOptions
from qlp_ray.train.ray_ppo import train_ppo_on_ray
from qlp_ray.train.rewards import keyword_reward
from tests.train.test_ppo import _prompts

pytestmark = pytest.mark.integration

REWARD_GAIN = 0.2  # held-out mean reward must rise by at least this (reward in [0, 1])
KL_BOUND = 4.0  # nats per completion (exact KL to the adapter-disabled base, 8 tokens)


def test_ppo_two_workers_reward_rises_kl_bounded_and_a_killed_worker_resumes(
    ray_local, tiny_cfg, tmp_path
):
    tiny_cfg.train.cpus_per_worker = 0.5
    run = f"ppo-kill-{uuid.uuid4().hex[:6]}"  # an existing run name would resume that run
    res = train_ppo_on_ray(
        tiny_cfg,
        prompts=_prompts("train", 64),
        eval_prompts=_prompts("heldout", 8),
        reward=keyword_reward(["steps"]),
        options=PPOOptions(
            steps=20,
            batch_size=8,
            learning_rate=3e-3,
            kl_coef=0.2,
            checkpoint_every=5,
            max_new_tokens=8,
        ),
        workers=2,
        output_dir=tmp_path / "adapter",
        run_name=run,
        max_failures=1,
        _kill_at_step=7,
        _kill_rank=1,
    )
    m = res.metrics
    assert (tiny_cfg.paths.runs / f"{run}.killed").is_file()  # rank 1 really died at step 7
    assert m["resumed_from_step"] == 5.0  # ... and the new group resumed from step 5, not 0
    assert m["steps"] == 20.0 and m["workers"] == 2.0 and m["finished"] == 1.0
    assert m["reward_after"] >= m["reward_before"] + REWARD_GAIN, m
    assert 0.0 <= m["kl_after"] < KL_BOUND, m
    assert m["kl_before"] == pytest.approx(0.0, abs=1e-5)  # LoRA starts as the identity
    assert (res.adapter_dir / "adapter_model.safetensors").is_file()
