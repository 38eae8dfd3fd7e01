"""A weighted stack as one LoRA of concatenated ranks: the same weight delta, exactly."""

from __future__ import annotations

import json
import math

import pytest
import torch
from safetensors.torch import load_file, save_file

from qlp_ray.core.errors import InvalidRequest
from qlp_ray.models.lora_concat import concat_stack

PREFIX = "base_model.model.model.layers.0.self_attn."


def _adapter(path, seed, r, alpha, modules, **config):
    torch.manual_seed(seed)
    tensors = {}
    for m in modules:
        tensors[f"{PREFIX}{m}.lora_A.weight"] = torch.randn(r, 16)
        tensors[f"{PREFIX}{m}.lora_B.weight"] = torch.randn(16, r)
    path.mkdir()
    save_file(tensors, str(path / "adapter_model.safetensors"))
    cfg = {"peft_type": "LORA", "r": r, "lora_alpha": alpha, "target_modules": modules,
           "bias": "none", **config}  # fmt: skip
    (path / "adapter_config.json").write_text(json.dumps(cfg))
    return path, tensors, (alpha / math.sqrt(r) if config.get("use_rslora") else alpha / r)


def _delta(tensors, module, scale=1.0):
    a = tensors.get(f"{PREFIX}{module}.lora_A.weight")
    b = tensors.get(f"{PREFIX}{module}.lora_B.weight")
    return torch.zeros(16, 16) if a is None else scale * b @ a


def test_concatenated_ranks_carry_the_weighted_sum_of_deltas(tmp_path):
    one = _adapter(tmp_path / "one", 1, 4, 8, ["q_proj", "v_proj"])
    two = _adapter(tmp_path / "two", 2, 8, 4, ["q_proj", "o_proj"], use_rslora=True)
    weights = [0.7, -0.3]
    rank = concat_stack([one[0], two[0]], weights, tmp_path / "out")
    assert rank == 12
    out = load_file(str(tmp_path / "out" / "adapter_model.safetensors"))
    config = json.loads((tmp_path / "out" / "adapter_config.json").read_text())
    assert config["r"] == config["lora_alpha"] == 12 and config["use_rslora"] is False
    assert config["target_modules"] == ["o_proj", "q_proj", "v_proj"]
    for module in ("q_proj", "v_proj", "o_proj"):  # v only in one, o only in two
        expected = sum(
            w * _delta(t, module, s) for (_, t, s), w in zip((one, two), weights, strict=True)
        )
        assert out[f"{PREFIX}{module}.lora_A.weight"].shape == (12, 16)
        torch.testing.assert_close(_delta(out, module), expected, rtol=1e-5, atol=1e-5)


def test_adapters_a_concatenation_cannot_carry_are_refused(tmp_path):
    one = _adapter(tmp_path / "one", 1, 4, 8, ["q_proj"])
    two = _adapter(tmp_path / "two", 2, 4, 8, ["q_proj"], rank_pattern={"q_proj": 2})
    with pytest.raises(InvalidRequest, match="rank_pattern"):
        concat_stack([one[0], two[0]], [1, 1], tmp_path / "out")
    with pytest.raises(InvalidRequest, match="one weight per member"):
        concat_stack([one[0]], [1, 1], tmp_path / "out")
