"""Held-out completion perplexity on a (very small) built-in tiny Llama with real LoRA adapters."""

from __future__ import annotations

import math

import pytest
import torch

from qlp_ray.core.config import load_config
from qlp_ray.core.errors import AdapterLoadError, InvalidRequest
from qlp_ray.data.format import to_prompt_completion
from qlp_ray.improve.heldout import CompletionPerplexityEvaluator

RECORDS = [
    {"instruction": f"Restart service number {i}", "input": "", "output": f"systemctl restart s{i}",
     "domain": "devops", "validation_score": 1.0}
    for i in range(6)
]  # fmt: skip


@pytest.fixture(scope="module")
def cfg(tmp_path_factory):
    home = tmp_path_factory.mktemp("home")
    tiny = {"vocab_size": 256, "hidden_size": 32, "num_layers": 1, "num_heads": 2,
            "intermediate_size": 64, "pretrain_steps": 5, "batch_size": 4}  # fmt: skip
    return load_config(overrides={"paths": {"home": str(home)}, "model": {"tiny": tiny}},
                       environ={})  # fmt: skip


def _lora(cfg, out, train_steps: int):
    from peft import LoraConfig, get_peft_model

    from qlp_ray.models.base import load_base

    torch.manual_seed(0)
    base, tok = load_base(cfg)
    targets = ["q_proj", "v_proj", "o_proj", "up_proj", "down_proj"]
    lora = LoraConfig(r=4, lora_alpha=8, target_modules=targets, lora_dropout=0.0)
    model = get_peft_model(base, lora)
    if train_steps:
        opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=3e-2)
        texts = [p["prompt"] + p["completion"] for p in map(to_prompt_completion, RECORDS)]
        batch = tok(texts, return_tensors="pt", padding=True)
        labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
        model.train()
        for _ in range(train_steps):
            opt.zero_grad()
            model(**batch, labels=labels).loss.backward()
            opt.step()
    model.save_pretrained(str(out))
    model.eval()
    return out, model, tok


def test_perplexity_matches_hf_loss_and_lora_changes_it(cfg, tmp_path):
    ev = CompletionPerplexityEvaluator(cfg)
    base = ev.evaluate(None, RECORDS[:1])
    # Same number from the model's own loss with the prompt masked out.
    from qlp_ray.models.base import load_base

    model, tok = load_base(cfg)
    pc = to_prompt_completion(RECORDS[0])
    p_ids = tok(pc["prompt"], add_special_tokens=False)["input_ids"]
    c_ids = tok(pc["completion"] + tok.eos_token, add_special_tokens=False)["input_ids"]
    ids = torch.tensor([p_ids + c_ids])
    labels = torch.tensor([[-100] * len(p_ids) + c_ids])
    with torch.no_grad():
        hf = float(model(input_ids=ids, labels=labels).loss)
    assert base["mean_nll"] == pytest.approx(hf, rel=1e-5)
    assert base["perplexity"] == pytest.approx(math.exp(hf), rel=1e-5)
    assert base["n_tokens"] == len(c_ids)

    full = ev.evaluate(None, RECORDS)
    zero = ev.evaluate(_lora(cfg, tmp_path / "zero", 0)[0], RECORDS)  # LoRA B = 0: no change
    assert zero["perplexity"] == pytest.approx(full["perplexity"], rel=1e-5)
    tuned_dir, tuned_model, tok = _lora(cfg, tmp_path / "tuned", 40)
    tuned = ev.evaluate(tuned_dir, RECORDS)
    in_memory = CompletionPerplexityEvaluator(cfg)
    in_memory._base, in_memory._tokenizer = tuned_model, tok  # the trained model itself
    assert tuned["perplexity"] == pytest.approx(in_memory.evaluate(None, RECORDS)["perplexity"],
                                                rel=1e-5)  # fmt: skip
    # 40 LoRA steps on an almost untrained 1-layer model move it only a little, but surely.
    assert tuned["perplexity"] < 0.99 * full["perplexity"]
    assert ev.evaluate(None, RECORDS)["perplexity"] == pytest.approx(full["perplexity"], rel=1e-6)

    with pytest.raises(AdapterLoadError, match="no adapter_model.safetensors"):
        ev.evaluate(tmp_path, RECORDS)
    with pytest.raises(InvalidRequest):
        ev.evaluate(None, [])
