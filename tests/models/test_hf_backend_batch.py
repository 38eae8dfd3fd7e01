"""TransformersBackend.generate_batch: rows with different adapters in one generate call."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from peft.tuners.tuners_utils import BaseTunerLayer

from qlp_ray.core.errors import InvalidRequest
from qlp_ray.models.backend import AdapterNotLoaded, GenerationRequest
from qlp_ray.models.batched_lora import LoRATables
from qlp_ray.models.hf_backend import TransformersBackend
from tests.helpers.tiny_lm import save_random_lora
from tests.models.test_serve_backend import _tiny_llama, tokenizer  # noqa: F401 - fixture

PROMPTS = [
    "how do i partition a table",
    "deploy",
    "write a react component with a sortable table and hooks please",
    "explain gradient descent",
]


def _adapter(base, out: Path, seed: int, r: int, **extra) -> Path:
    # large random B so each adapter visibly changes greedy output
    targets = ("q_proj", "v_proj", "o_proj")
    return save_random_lora(base, out, seed, r=r, targets=targets, b_std=2.0, **extra)


@pytest.fixture(scope="module")
def backend(tokenizer, tmp_path_factory):  # noqa: F811
    base = _tiny_llama()
    root = tmp_path_factory.mktemp("batch_adapters")
    backend = TransformersBackend(base, tokenizer)
    for name, seed, r in (("first", 1, 4), ("second", 2, 4), ("wide", 3, 8)):
        backend.load_adapter(name, str(_adapter(base, root / name, seed, r)))
    return backend


def _same(a, b) -> None:
    assert (a.text, a.prompt_tokens, a.completion_tokens, a.finish_reason) == (
        b.text,
        b.prompt_tokens,
        b.completion_tokens,
        b.finish_reason,
    )


def test_mixed_adapter_batch_equals_each_request_alone(backend):
    adapters = ["first", "second", None, "wide"]
    items = [
        (GenerationRequest(PROMPTS[i % 4], max_new_tokens=(3, 8, 12)[i % 3]), adapters[i % 4])
        for i in range(12)
    ]
    alone = [backend.generate(r, a) for r, a in items]
    # a stop string from one row's own output: that row must end early, the others not
    assert len(alone[5].text) >= 6
    stop = alone[5].text[3:5]
    items[5] = (GenerationRequest(PROMPTS[1], max_new_tokens=12, stop=(stop,)), items[5][1])
    alone[5] = backend.generate(*items[5])
    assert alone[5].finish_reason == "stop" and len(alone[5].text) <= 3

    batch = backend.generate_batch(items)
    assert len(batch) == len(items)
    for got, want in zip(batch, alone, strict=True):
        _same(got, want)
        assert got.extra["batch_size"] == len(items)
    assert [g.completion_tokens for g in batch[:3]] == [3, 8, 12]  # per-row max_tokens


def test_each_row_gets_its_own_adapter(backend):
    prompt = PROMPTS[0]
    names = ["first", "second", "wide", None]
    items = [(GenerationRequest(prompt, max_new_tokens=10), n) for n in names]
    texts = [g.text for g in backend.generate_batch(items)]
    assert len(set(texts)) == 4  # same prompt, four different models
    for text, name in zip(texts, names, strict=True):
        assert text == backend.generate(GenerationRequest(prompt, max_new_tokens=10), name).text


def test_gathered_lora_matches_peft_mixed_batch_logits(backend, tokenizer):  # noqa: F811
    peft = backend.peft_model
    tables = LoRATables(m for m in peft.modules() if isinstance(m, BaseTunerLayer))
    rows = ["wide", "first", None, "second"]
    assert tables.supports({"first", "second", "wide"})
    enc = tokenizer(PROMPTS, return_tensors="pt", padding=True)
    with torch.inference_mode():
        want = peft(**enc, adapter_names=[r or "__base__" for r in rows]).logits
        backend._deactivate_locked()
        with tables.rows(rows):
            got = peft(**enc).logits
        plain = peft(**enc).logits  # hooks removed, layers inactive: the base model
    assert torch.allclose(got, want, atol=1e-5)
    assert torch.allclose(plain[2], want[2], atol=1e-5)
    assert not torch.allclose(plain[0], want[0], atol=1e-2)


def test_a_bad_row_fails_alone_and_seeded_rows_keep_their_sample(backend):
    seeded = GenerationRequest(PROMPTS[0], max_new_tokens=6, temperature=1.0, seed=7)
    items = [
        (GenerationRequest(PROMPTS[0], max_new_tokens=4), "first"),
        (GenerationRequest("word " * 70, max_new_tokens=4), "second"),  # > context of 64
        (GenerationRequest(PROMPTS[1], max_new_tokens=4), "not-loaded"),
        (seeded, "wide"),
        (GenerationRequest(PROMPTS[2], max_new_tokens=4), "second"),
    ]
    out = backend.generate_batch(items)
    assert isinstance(out[1], InvalidRequest) and "context length" in str(out[1])
    assert isinstance(out[2], AdapterNotLoaded)
    _same(out[0], backend.generate(*items[0]))
    _same(out[4], backend.generate(*items[4]))
    _same(out[3], backend.generate(seeded, "wide"))


def test_dora_adapters_run_as_one_batch_per_adapter(backend, tmp_path):
    base = _tiny_llama()
    backend.load_adapter("dora", str(_adapter(base, tmp_path / "dora", 5, 4, use_dora=True)))
    try:
        tables = LoRATables(
            m for m in backend.peft_model.modules() if isinstance(m, BaseTunerLayer)
        )
        assert not tables.supports({"dora", "first"}) and tables.supports({"first", "wide"})
        items = [
            (GenerationRequest(p, max_new_tokens=6), n)
            for p in PROMPTS[:2]
            for n in ("dora", "first", None)
        ]
        for got, (request, name) in zip(backend.generate_batch(items), items, strict=True):
            _same(got, backend.generate(request, name))
    finally:
        backend.unload_adapter("dora")
