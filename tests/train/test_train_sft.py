"""Plain-TRL SFT on the tiny model (no Ray): LoRA lowers held-out loss, AdaLoRA reallocates rank."""

from __future__ import annotations

import json

import pytest
from safetensors import safe_open

from qlp_ray.data.capsules import load_capsules, sample_path
from qlp_ray.data.format import to_prompt_completion
from qlp_ray.models.base import resolve_base_path
from qlp_ray.train.ray_train import effective_train_config
from qlp_ray.train.sft import ADAPTER_FILES, build_sft_args, resolve_precision, run_sft


def _records(domain: str, split: str, n: int) -> list[dict[str, str]]:
    return [to_prompt_completion(c) for c in load_capsules(sample_path(domain, split))[:n]]


def test_lora_sft_lowers_heldout_loss(tiny_cfg, tmp_path):
    train_cfg = effective_train_config(tiny_cfg, method="lora", steps=30)
    result = run_sft(
        resolve_base_path(tiny_cfg),
        _records("devops", "train", 160),
        _records("devops", "heldout", 24),
        train_cfg,
        tmp_path / "run",
        max_seq_len=tiny_cfg.model.max_seq_len,
    )
    assert result.steps == 30
    # The tiny base model was pre-trained on the train splits, so held-out completion loss
    # starts low (~0.48); 30 LoRA steps must still cut it by more than 5 % (seeded run).
    assert result.eval_loss_after < 0.95 * result.eval_loss_before, result
    assert result.train_loss > 0
    assert result.tokens > 30 * 8 * 10  # at least 10 tokens per sequence
    assert result.tokens_per_s > 0 and result.seconds > 0
    assert result.rank_pattern is None
    assert sorted(p.name for p in result.adapter_dir.iterdir()) == sorted(ADAPTER_FILES)
    config = json.loads((result.adapter_dir / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and config["r"] == train_cfg.rank
    assert config["task_type"] == "CAUSAL_LM"
    assert set(config["target_modules"]) == set(train_cfg.target_modules)
    with safe_open(result.adapter_dir / "adapter_model.safetensors", "pt") as fh:
        keys = list(fh.keys())
        assert any("lora_B" in k for k in keys)
        # LoRA B starts at zero; after training it must not be zero any more.
        b = fh.get_tensor(next(k for k in keys if "lora_B" in k))
        assert float(b.abs().sum()) > 0


def test_adalora_reallocates_rank(tiny_cfg, tmp_path):
    train_cfg = effective_train_config(tiny_cfg, method="adalora", steps=20)
    a = train_cfg.adalora
    result = run_sft(
        resolve_base_path(tiny_cfg),
        _records("api", "train", 96),
        _records("api", "heldout", 16),
        train_cfg,
        tmp_path / "run",
        max_seq_len=tiny_cfg.model.max_seq_len,
    )
    pattern = result.rank_pattern
    assert pattern, "update_and_allocate never produced a rank pattern"
    n_modules = tiny_cfg.model.tiny.num_layers * len(train_cfg.target_modules)
    assert len(pattern) == n_modules
    ranks = list(pattern.values())
    # Started uniform at init_r everywhere; the budget is target_r per module on average.
    assert all(0 <= r <= a.init_r for r in ranks)
    assert sum(ranks) == a.target_r * n_modules
    assert sum(ranks) < a.init_r * n_modules
    assert len(set(ranks)) > 1, f"ranks stayed uniform: {pattern}"

    # The saved adapter carries the pattern and its E vectors are cut down to it.
    saved = json.loads((result.adapter_dir / "adapter_config.json").read_text())
    assert saved["peft_type"] == "ADALORA"
    assert saved["rank_pattern"]
    saved_ranks = {k: sum(bool(x) for x in v) for k, v in saved["rank_pattern"].items()}
    assert sorted(saved_ranks.values()) == sorted(ranks)
    with safe_open(result.adapter_dir / "adapter_model.safetensors", "pt") as fh:
        e_sizes = sorted(fh.get_tensor(k).shape[0] for k in fh.keys() if "lora_E" in k)
    assert e_sizes == sorted(ranks)
    assert result.eval_loss_after < result.eval_loss_before


@pytest.mark.parametrize(
    ("overrides", "needle"),
    [
        ({"method": "adalora", "steps": 8}, "train.adalora.tinit"),
        ({"steps": 0}, "train.steps"),
        ({"method": "dora"}, "train.method"),
        ({"workers": 0}, "train.workers"),
        ({"early_stopping_patience": 2, "checkpoint_every": 0}, "train.checkpoint_every"),
        ({"lr_scheduler": "step"}, "train.lr_scheduler"),
        ({"grad_accum": 0}, "train.grad_accum"),
        ({"precision": "fp16"}, "train.precision"),
    ],
)
def test_training_options_are_validated(overrides, needle):
    from qlp_ray.core.config import load_config
    from qlp_ray.core.errors import ConfigError

    given = {k: v for k, v in overrides.items() if k in ("method", "steps", "workers")}
    more = {k: v for k, v in overrides.items() if k not in given}
    with pytest.raises(ConfigError, match=needle.replace(".", r"\.")):
        effective_train_config(
            load_config(defaults_file=None, environ={}), **given, overrides=more or None
        )


def test_sft_args_follow_the_training_options(tmp_path, monkeypatch):
    from qlp_ray.core.config import load_config
    from qlp_ray.core.errors import TrainingError
    from qlp_ray.train import sft

    cfg = load_config(defaults_file=None, environ={})
    opts = {"lr_scheduler": "cosine", "grad_accum": 4, "checkpoint_every": 10,
            "early_stopping_patience": 2, "precision": "fp32"}  # fmt: skip
    t = effective_train_config(cfg, steps=40, overrides=opts)
    args = build_sft_args(t, tmp_path, max_seq_len=64, use_cpu=True, checkpoints=True)
    assert (args.lr_scheduler_type.value, args.gradient_accumulation_steps) == ("cosine", 4)
    assert (args.eval_strategy.value, args.eval_steps) == ("steps", 10)
    assert (args.save_strategy.value, args.save_steps) == ("steps", 10)
    assert args.metric_for_best_model == "eval_loss" and not args.bf16
    assert args.report_to == [] or args.report_to == "none"
    # a plain run evaluates but does not save; no held-out evaluations without checkpoint_every
    plain = build_sft_args(t, tmp_path, max_seq_len=64, use_cpu=True)
    assert plain.save_strategy.value == "no" and plain.eval_strategy.value == "steps"
    none = effective_train_config(
        cfg, overrides={"checkpoint_every": 0, "lr_scheduler": "constant"}
    )
    args = build_sft_args(none, tmp_path, max_seq_len=64, use_cpu=True, checkpoints=True)
    assert args.eval_strategy.value == "no" and args.save_strategy.value == "no"
    assert args.lr_scheduler_type.value == "constant_with_warmup"
    # auto is fp32 on CPU (bf16 autocast measured ~2x slower: benchmarks/sft_precision.py)
    assert resolve_precision("auto", use_cpu=True) == "fp32"
    monkeypatch.setattr(sft, "bf16_supported", lambda use_cpu: False)
    with pytest.raises(TrainingError, match="precision=bf16.*AVX512-BF16"):
        resolve_precision("bf16", use_cpu=True)
    monkeypatch.setattr(sft, "bf16_supported", lambda use_cpu: True)
    bf16 = effective_train_config(cfg, overrides={"precision": "bf16"})
    assert build_sft_args(bf16, tmp_path, max_seq_len=64, use_cpu=True).bf16


def test_early_stopping_ends_a_diverging_run(tiny_cfg, tmp_path):
    """A constant, far too high learning rate makes the held-out loss rise: with an
    evaluation every 4 steps and patience 2 the run stops long before its 40 steps."""
    train_cfg = effective_train_config(
        tiny_cfg,
        steps=40,
        overrides={"learning_rate": 0.03, "lr_scheduler": "constant", "checkpoint_every": 4,
                   "early_stopping_patience": 2, "grad_accum": 2, "batch_size": 4},
    )  # fmt: skip
    result = run_sft(
        resolve_base_path(tiny_cfg),
        _records("devops", "train", 160),
        _records("devops", "heldout", 24),
        train_cfg,
        tmp_path / "run",
        max_seq_len=tiny_cfg.model.max_seq_len,
        save_adapter=False,
    )
    assert result.steps < 40 and result.steps % 4 == 0, result
    assert result.eval_loss_after > result.eval_loss_before, result


def test_overrides_set_train_fields_and_are_validated():
    from qlp_ray.core.config import load_config
    from qlp_ray.core.errors import ConfigError

    cfg = load_config(defaults_file=None, environ={})
    out = effective_train_config(cfg, steps=5, overrides={"rank": 4, "alpha": None, "dropout": 0.2})
    assert (out.rank, out.alpha, out.dropout, out.steps) == (4, cfg.train.alpha, 0.2, 5)
    with pytest.raises(ConfigError, match=r"train\.learning_rate"):
        effective_train_config(cfg, overrides={"learning_rate": -1.0})


def test_orth_penalty_matches_peft_adalora_regulariser(tiny_cfg):
    """TRL drops the model's own loss; our re-added penalty must equal PEFT's term."""
    import torch
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM

    from qlp_ray.train.peft_setup import build_peft_config
    from qlp_ray.train.sft import adalora_orth_penalty

    train_cfg = effective_train_config(tiny_cfg, method="adalora", steps=20)
    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(resolve_base_path(tiny_cfg))
    model = get_peft_model(base, build_peft_config(train_cfg, 20))
    ids = torch.randint(0, 100, (2, 12))
    model.train()
    torch.manual_seed(1)
    with_reg = model(input_ids=ids, labels=ids).loss
    config = model.peft_config["default"]
    weight, config.orth_reg_weight = config.orth_reg_weight, 0.0
    torch.manual_seed(1)  # same dropout mask
    without = model(input_ids=ids, labels=ids).loss
    penalty = adalora_orth_penalty(model)
    assert float(penalty) > 0
    assert float(with_reg - without) == pytest.approx(weight * float(penalty), rel=1e-4)
    penalty.backward()
    assert any(p.grad is not None for n, p in model.named_parameters() if "lora_A" in n)
