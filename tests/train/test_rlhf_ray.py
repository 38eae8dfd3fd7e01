"""DPO and GRPO on Ray Train: checkpoints, a killed worker resumes, adapters come back."""

from __future__ import annotations

import pytest
import torch

from qlp_ray.train.dpo import preference_margin
from qlp_ray.train.ray_rlhf import RLHFOptions, train_rlhf_on_ray
from qlp_ray.train.rewards import token_share_reward
from tests.helpers.tiny_lm import make_model, make_tokenizer, pretrain
from tests.train.test_rlhf import HELD_OUT_PROMPTS, PROMPTS, _pairs

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory):
    torch.set_num_threads(1)
    tok = make_tokenizer()
    model = pretrain(make_model(tok), tok, steps=60)
    path = tmp_path_factory.mktemp("base")
    model.save_pretrained(path, safe_serialization=True)
    tok.save_pretrained(path)
    return path, model, tok


def test_dpo_survives_a_killed_worker(ray_local, base_dir, tmp_path):
    from peft import PeftModel

    path, base, tok = base_dir
    held = _pairs(HELD_OUT_PROMPTS, shift=2)
    before = preference_margin(base, tok, held)
    res = train_rlhf_on_ray(
        "dpo",
        base_path=str(path),
        data=_pairs(PROMPTS),
        options=RLHFOptions(
            steps=12,
            batch_size=4,
            learning_rate=1e-2,
            checkpoint_every=4,
            warmup_ratio=0.1,
            lr_scheduler_type="cosine",
            grad_accum=2,
        ),
        output_dir=tmp_path / "adapter",
        storage_path=tmp_path / "runs",
        run_name="dpo-kill",
        workers=1,
        max_failures=1,
        _kill_at_step=6,
    )
    assert (tmp_path / "runs" / "dpo-kill.killed").is_file()  # a worker really died at step 6
    assert res.metrics["resumed_from_step"] == 4.0  # ... and the run resumed from step 4
    assert res.metrics["finished"] == 1.0
    assert (res.adapter_dir / "adapter_model.safetensors").is_file()
    tuned = PeftModel.from_pretrained(base, str(res.adapter_dir))
    after = preference_margin(tuned, tok, held)
    assert after > before, (before, after)


def test_grpo_one_worker_reports_reward(ray_local, base_dir, tmp_path):
    path, _, _ = base_dir
    reward = token_share_reward({"the", "docker", "deploy", "service"})
    res = train_rlhf_on_ray(
        "grpo",
        base_path=str(path),
        data=PROMPTS,
        reward_funcs=[reward],
        options=RLHFOptions(
            steps=6,
            batch_size=8,
            learning_rate=5e-3,
            checkpoint_every=3,
            method_kwargs={"num_generations": 4, "max_completion_length": 6},
        ),
        output_dir=tmp_path / "adapter",
        storage_path=tmp_path / "runs",
        run_name="grpo",
        max_failures=0,
    )
    assert (res.adapter_dir / "adapter_config.json").is_file()
    assert res.metrics["resumed_from_step"] == 0.0
    assert "train_loss" in res.metrics
