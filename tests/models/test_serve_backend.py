"""TransformersBackend on a tiny random Llama: adapters by name on one PeftModel, no Ray."""

from __future__ import annotations

import copy
import threading
from pathlib import Path

import pytest
import torch
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

from qlp_ray.core.errors import AdapterLoadError, InvalidRequest
from qlp_ray.models.backend import AdapterNotLoaded, GenerationRequest
from qlp_ray.models.hf_backend import TransformersBackend
from qlp_ray.route.embeddings import packaged_model_dir
from tests.helpers.tiny_lm import save_random_lora


def _tiny_llama(hidden: int = 32, vocab: int = 30522, seed: int = 0) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=64,
    )
    return LlamaForCausalLM(cfg).eval()


@pytest.fixture(scope="module")
def tokenizer():
    tok = AutoTokenizer.from_pretrained(str(packaged_model_dir()))
    tok.eos_token = "[SEP]"
    return tok


def _save_adapter(base: LlamaForCausalLM, out: Path, seed: int) -> Path:
    # large random B so the adapter visibly changes greedy output
    save_random_lora(base, out, seed, r=4, alpha=16, b_std=2.0)
    assert (out / "adapter_model.safetensors").is_file()
    return out


@pytest.fixture(scope="module")
def setup(tokenizer, tmp_path_factory):
    base = _tiny_llama()
    reference = copy.deepcopy(base)
    root = tmp_path_factory.mktemp("adapters")
    a = _save_adapter(base, root / "first", seed=1)
    b = _save_adapter(base, root / "second", seed=2)
    backend = TransformersBackend(base, tokenizer)
    return backend, reference, a, b


REQ = GenerationRequest(prompt="how do i partition a table", max_new_tokens=8)


def _reference_ids(model, tokenizer, prompt: str, n: int) -> list[int]:
    enc = tokenizer(prompt, return_tensors="pt")
    out = model.generate(
        input_ids=enc["input_ids"],
        attention_mask=enc["attention_mask"],
        max_new_tokens=n,
        do_sample=False,
        pad_token_id=0,
        eos_token_id=None,
    )
    return out[0, enc["input_ids"].shape[1] :].tolist()


def test_base_generation_matches_plain_model_and_counts_tokens(setup, tokenizer):
    backend, reference, _, _ = setup
    gen = backend.generate(REQ)
    assert gen.prompt_tokens == len(tokenizer(REQ.prompt)["input_ids"])
    assert 1 <= gen.completion_tokens <= 8
    assert gen.finish_reason in {"stop", "length"}
    ref = _reference_ids(reference, tokenizer, REQ.prompt, 8)
    sep = tokenizer.eos_token_id
    ref = ref[: ref.index(sep) + 1] if sep in ref else ref
    assert gen.text == tokenizer.decode(ref, skip_special_tokens=True)


def test_adapters_by_name_change_output_and_base_stays_base(setup):
    backend, _, a, b = setup
    base_text = backend.generate(REQ).text
    backend.load_adapter("first", str(a))
    backend.load_adapter("second", str(b))
    assert backend.loaded_adapters == ["first", "second"]
    text_a = backend.generate(REQ, adapter="first").text
    text_b = backend.generate(REQ, adapter="second").text
    assert text_a != base_text and text_b != base_text and text_a != text_b
    # None = adapters disabled: identical to the base model even with adapters loaded
    assert backend.generate(REQ).text == base_text
    assert backend.generate(REQ, adapter="first").text == text_a


def test_concurrent_requests_never_see_another_adapter(setup):
    backend, _, a, b = setup
    backend.load_adapter("first", str(a))
    backend.load_adapter("second", str(b))
    expected = {
        name: backend.generate(REQ, adapter=name).text for name in ("first", "second", None)
    }
    results: list[tuple[str | None, str]] = []

    def worker(name: str | None) -> None:
        for _ in range(3):
            results.append((name, backend.generate(REQ, adapter=name).text))

    threads = [
        threading.Thread(target=worker, args=(n,))
        for n in ("first", "second", None, "first", "second")
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 15
    assert all(text == expected[name] for name, text in results)


def test_unload_frees_adapter_weights(setup):
    backend, _, a, _ = setup
    backend.load_adapter("gone", str(a))
    assert backend.adapter_parameter_names("gone")
    backend.unload_adapter("gone")
    assert "gone" not in backend.loaded_adapters
    assert backend.adapter_parameter_names("gone") == []
    assert "gone" not in backend.peft_model.peft_config
    backend.unload_adapter("never-loaded")  # ignored
    with pytest.raises(AdapterNotLoaded):
        backend.generate(REQ, adapter="gone")


def test_pickle_and_mismatched_adapters_are_refused(setup, tmp_path):
    backend, _, a, _ = setup
    bad = tmp_path / "pickled"
    bad.mkdir()
    (bad / "adapter_config.json").write_text((a / "adapter_config.json").read_text())
    (bad / "adapter_model.bin").write_bytes(b"not loaded")
    with pytest.raises(AdapterLoadError, match="adapter_model.safetensors"):
        backend.load_adapter("pickled", str(bad))
    (bad / "adapter_model.safetensors").write_bytes((a / "adapter_model.safetensors").read_bytes())
    with pytest.raises(AdapterLoadError, match="pickle"):
        backend.load_adapter("pickled", str(bad))
    other = _save_adapter(_tiny_llama(hidden=48), tmp_path / "other", seed=3)
    with pytest.raises(AdapterLoadError, match="could not be loaded|does not fit"):
        backend.load_adapter("other", str(other))
    assert "other" not in backend.loaded_adapters
    assert "other" not in backend.peft_model.peft_config
    backend.load_adapter("first", str(a))
    assert backend.generate(REQ, adapter="first").completion_tokens >= 1


def test_stop_strings_and_context_limit(setup):
    backend, _, _, _ = setup
    full = backend.generate(GenerationRequest(prompt=REQ.prompt, max_new_tokens=12))
    words = full.text.split()
    if len(words) >= 2:
        stop = words[1]
        cut = backend.generate(
            GenerationRequest(prompt=REQ.prompt, max_new_tokens=12, stop=(stop,))
        )
        assert cut.finish_reason == "stop"
        assert stop not in cut.text and full.text.startswith(cut.text)
    with pytest.raises(InvalidRequest, match="context length of 64"):
        backend.generate(GenerationRequest(prompt="word " * 70, max_new_tokens=4))


def test_sampling_is_seeded(setup):
    backend, _, _, _ = setup
    req = GenerationRequest(prompt=REQ.prompt, max_new_tokens=8, temperature=1.0, top_p=0.9, seed=7)
    assert backend.generate(req).text == backend.generate(req).text
