"""LeanLlama: the continuous decoder's forward on plain tensors equals transformers + PEFT."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import (
    DynamicCache,
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
)

from qlp_ray.models.backend import GenerationRequest
from qlp_ray.models.hf_backend import TransformersBackend
from qlp_ray.models.lean_llama import KVCache, LeanLlama
from tests.helpers.tiny_lm import save_random_lora
from tests.models.test_serve_backend import tokenizer  # noqa: F401 - fixture

PROMPTS = ["how do i partition a table", "deploy", "write a react component with hooks"]


SMALL = dict(
    vocab_size=30522,
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    max_position_embeddings=64,
)


def _llama(kv_heads: int = 4, **config) -> LlamaForCausalLM:
    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(**SMALL, num_key_value_heads=kv_heads, **config)).eval()


def _pair(tokenizer, root: Path, kv_heads: int, targets_of: dict[str, tuple[str, ...]]):  # noqa: F811
    """The same model + adapters twice: with the lean forward and with transformers'."""
    base = _llama(kv_heads)
    backends = []
    for lean in (True, False):
        backend = TransformersBackend(_llama(kv_heads), tokenizer, lean_forward=lean)
        for seed, (name, targets) in enumerate(targets_of.items(), start=1):
            out = root / f"{name}-{kv_heads}"
            if not out.exists():
                save_random_lora(base, out, seed, r=4 + 2 * seed, targets=targets, b_std=2.0)
            backend.load_adapter(name, str(out))
        backends.append(backend)
    return backends


def _left_padded(backend, prompts: list[str]):
    rows = [backend.tokenizer(p)["input_ids"] for p in prompts]
    width = max(map(len, rows))
    ids = torch.tensor([[0] * (width - len(r)) + r for r in rows])
    mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows])
    return ids, mask, (mask.cumsum(-1) - 1).clamp(min=0)


# "mlp" is also a module name: the adapter must still load as itself
ADAPTERS = {
    "attn": ("q_proj", "k_proj", "v_proj", "o_proj"),
    "qv": ("q_proj", "v_proj"),
    "mlp": ("gate_proj", "down_proj", "o_proj"),
}


@pytest.mark.parametrize("kv_heads", [4, 2])
def test_prefill_and_steps_equal_transformers_logits(tokenizer, tmp_path, kv_heads):  # noqa: F811
    lean, hf = _pair(tokenizer, tmp_path, kv_heads, ADAPTERS)
    assert lean.new_cache().__class__ is KVCache and isinstance(hf.new_cache(), DynamicCache)
    rows = ["attn", None, "mlp", "qv", "attn"]
    prompts = [PROMPTS[i % 3] for i in range(len(rows))]
    ids, mask, pos = _left_padded(lean, prompts)
    caches = {lean: lean.new_cache(), hf: hf.new_cache()}
    outs = [b.forward_rows(rows, ids, mask, pos, c) for b, c in caches.items()]
    torch.testing.assert_close(outs[0], outs[1], rtol=1e-4, atol=1e-4)
    nxt, pos = outs[1].argmax(-1).view(-1, 1), pos[:, -1:]
    for _ in range(4):  # decoding steps over the cache each built
        mask = torch.cat([mask, torch.ones(len(rows), 1, dtype=torch.long)], 1)
        pos = pos + 1
        outs = [b.forward_rows(rows, nxt, mask, pos, c) for b, c in caches.items()]
        torch.testing.assert_close(outs[0], outs[1], rtol=1e-4, atol=1e-4)
        nxt = outs[1].argmax(-1).view(-1, 1)
    assert caches[lean].layers[0].keys.shape == caches[hf].layers[0].keys.shape


def test_each_row_is_its_own_adapter_and_a_row_set_is_picked_once(tokenizer, tmp_path):  # noqa: F811
    lean, _ = _pair(tokenizer, tmp_path, 4, ADAPTERS)
    ids, mask, pos = _left_padded(lean, [PROMPTS[0]] * 4)
    rows = ["attn", "qv", "mlp", None]
    logits = lean.forward_rows(rows, ids, mask, pos, lean.new_cache())
    assert all(not torch.allclose(logits[i], logits[j]) for i in range(4) for j in range(i))
    model = lean._lean
    assert model.rows(rows) is model.rows(list(rows))  # same row set: no new selection
    assert model.rows(rows[::-1]) is not model.rows(rows)


def test_loading_another_adapter_restacks(tokenizer, tmp_path):  # noqa: F811
    lean, hf = _pair(tokenizer, tmp_path, 4, {"attn": ADAPTERS["attn"]})
    ids, mask, pos = _left_padded(lean, PROMPTS[:2])
    lean.forward_rows(["attn", None], ids, mask, pos, lean.new_cache())
    out = tmp_path / "late"
    save_random_lora(_llama(), out, 9, r=2, targets=("v_proj",), b_std=2.0)
    for b in (lean, hf):
        b.load_adapter("late", str(out))
    got = [b.forward_rows(["late", "attn"], ids, mask, pos, b.new_cache()) for b in (lean, hf)]
    torch.testing.assert_close(got[0], got[1], rtol=1e-4, atol=1e-4)


def test_continuous_rows_get_what_generate_gives_them(tokenizer, tmp_path):  # noqa: F811
    lean, _ = _pair(tokenizer, tmp_path, 2, ADAPTERS)
    items = [
        (GenerationRequest(PROMPTS[i % 3], max_new_tokens=3 + i), a, i)
        for i, a in enumerate(["attn", None, "mlp", "qv", "attn", "mlp"])
    ]
    decoder = lean.continuous_decoder()
    got = dict(decoder.admit(items[:3]))
    for _ in range(2):
        got.update(decoder.step())
    got.update(decoder.admit(items[3:]))
    while len(decoder):
        got.update(decoder.step())
    for request, adapter, key in items:
        want = lean.generate(request, adapter)
        assert (got[key].text, got[key].completion_tokens) == (want.text, want.completion_tokens)


def test_embedding_lora_rows_stay_out_of_the_lean_batch(tokenizer, tmp_path):  # noqa: F811
    lean, _ = _pair(tokenizer, tmp_path, 4, {"attn": ADAPTERS["attn"]})
    out = tmp_path / "emb"
    save_random_lora(_llama(), out, 5, r=2, targets=("embed_tokens", "q_proj"), b_std=2.0)
    lean.load_adapter("emb", str(out))
    assert lean.continuous_ok(GenerationRequest("x"), "attn")
    assert not lean.continuous_ok(GenerationRequest("x"), "emb")
    # it still generates, one batch of its own
    assert lean.generate_batch([(GenerationRequest(PROMPTS[0], max_new_tokens=3), "emb")])[0].text


def test_only_plain_llama_gets_a_lean_forward():
    assert LeanLlama.build(_llama()) is not None
    assert LeanLlama.build(_llama(attention_bias=True)) is None
    assert LeanLlama.build(_llama(rope_scaling={"rope_type": "linear", "factor": 2.0})) is None
    mistral = MistralForCausalLM(MistralConfig(**SMALL))
    assert LeanLlama.build(mistral) is None
    assert isinstance(TransformersBackend(mistral, _tok()).new_cache(), DynamicCache)


def _tok():
    from tests.helpers.tiny_lm import make_tokenizer

    return make_tokenizer()


def test_fused_weights_are_not_a_second_copy(tokenizer):  # noqa: F811
    model = _llama()
    before = model.model.layers[0].self_attn.k_proj.weight.detach().clone()
    backend = TransformersBackend(model, tokenizer)
    fused = backend._lean.groups[0].weight  # q/k/v of layer 0
    k = model.model.layers[0].self_attn.k_proj.weight
    assert k.untyped_storage().data_ptr() == fused.untyped_storage().data_ptr()
    assert torch.equal(k, before) and torch.equal(fused[32:64], before)


def test_half_precision_base_with_float32_adapters(tokenizer, tmp_path):  # noqa: F811
    base = _llama()
    out = save_random_lora(base, tmp_path / "attn", 1, r=4, targets=ADAPTERS["attn"], b_std=2.0)
    backends = []
    for lean in (True, False):
        backend = TransformersBackend(_llama().to(torch.bfloat16), tokenizer, lean_forward=lean)
        backend.load_adapter("attn", str(out))
        backends.append(backend)
    lora_a = backends[0].peft_model.base_model.model.model.layers[0].self_attn.q_proj.lora_A
    assert lora_a["attn"].weight.dtype == torch.float32  # PEFT keeps the adapter at float32
    ids, mask, pos = _left_padded(backends[0], PROMPTS)
    got = [b.forward_rows(["attn", None, "attn"], ids, mask, pos, b.new_cache()) for b in backends]
    assert got[0].dtype == torch.bfloat16
    torch.testing.assert_close(got[0].float(), got[1].float(), rtol=0.02, atol=0.05)
