"""OpenVINO backend (openvino-genai on a stateful IR): greedy tokens equal torch's for the
base, runtime LoRA adapters and merged adapters; the KV cache is state; INT8 shrinks the
weights and keeps perplexity; streaming adds up to the unstreamed text; tampered adapters
never reach it."""

from __future__ import annotations

import asyncio
import copy
import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("openvino")
pytest.importorskip("openvino_genai")
pytest.importorskip("nncf")

import torch  # noqa: E402

from qlp_ray.core.errors import (  # noqa: E402
    AdapterLoadError,
    AdapterNotFound,
    InvalidRequest,
    SignatureError,
)
from qlp_ray.evaluate.metrics import perplexity_from_nll  # noqa: E402
from qlp_ray.models.backend import (  # noqa: E402
    AdapterNotLoaded,
    Generation,
    GenerationRequest,
)
from qlp_ray.models.hf_backend import TransformersBackend  # noqa: E402
from qlp_ray.models.openvino_backend import OpenVINOBackend  # noqa: E402
from qlp_ray.models.openvino_export import MODEL_XML, weight_bytes  # noqa: E402
from qlp_ray.models.stream_text import TextDeltas  # noqa: E402

PROMPTS = ["def load_table(", "kubectl get pods", "The API returns", "Train the model"]
HELD_OUT = [
    "A small service reads events from a queue and writes daily aggregates to a table.",
    "Roll back the deployment when the health check fails twice in a row.",
    "The frontend fetches the list of orders and renders it as a sortable grid.",
]
INT8_PPL_TOLERANCE = 0.02  # relative change of held-out perplexity allowed for INT8


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tests.helpers.hw_fixtures import build_small_lm

    path = build_small_lm(tmp_path_factory.mktemp("small_lm"))
    return AutoModelForCausalLM.from_pretrained(path).eval(), AutoTokenizer.from_pretrained(path)


def _save_adapter(model, out: Path, seed: int, **lora) -> tuple[Path, object]:
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(seed)
    peft_model = get_peft_model(
        copy.deepcopy(model), LoraConfig(init_lora_weights=False, **lora)
    ).eval()
    peft_model.save_pretrained(out, safe_serialization=True)
    return out, peft_model


@pytest.fixture(scope="module")
def adapters(tiny, tmp_path_factory):
    """Two runtime-LoRA adapters on different layers and a DoRA one (merged export)."""
    model, _ = tiny
    root = tmp_path_factory.mktemp("adapters")
    return {
        "qv": _save_adapter(model, root / "qv", 3, r=4, lora_alpha=8,
                            target_modules=["q_proj", "v_proj"]),
        "mlp": _save_adapter(model, root / "mlp", 5, r=8, lora_alpha=16,
                             target_modules=["k_proj", "o_proj", "up_proj", "down_proj"]),
        "dora": _save_adapter(model, root / "dora", 7, r=4, lora_alpha=8, use_dora=True,
                              target_modules=["q_proj", "v_proj"]),
    }  # fmt: skip


@pytest.fixture(scope="module")
def ov_cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("ov_ir")


@pytest.fixture(scope="module")
def fp32_backend(tiny, ov_cache) -> OpenVINOBackend:
    model, tokenizer = tiny
    return OpenVINOBackend(model, tokenizer, device="CPU", weight_format="fp32", cache_dir=ov_cache)


def _torch_greedy(model, tokenizer, prompt: str, n: int) -> list[int]:
    ids = tokenizer(prompt, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        out = model.generate(
            ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=n,
            do_sample=False,
            pad_token_id=tokenizer.pad_token_id,
        )
    return out[0, ids.shape[1] :].tolist()


def test_greedy_tokens_equal_torch_for_base_runtime_and_merged_adapters(
    tiny, fp32_backend, adapters
) -> None:
    model, tokenizer = tiny
    backend = fp32_backend
    base = {p: _torch_greedy(model, tokenizer, p, 16) for p in PROMPTS}
    for prompt in PROMPTS:
        assert backend.generate_ids(tokenizer(prompt)["input_ids"], 16) == base[prompt]
    for name, (path, _) in adapters.items():
        backend.load_adapter(name, str(path))
    assert sorted(backend.loaded_adapters) == ["dora", "mlp", "qv"]
    # two plain LoRAs share the base pipeline as runtime adapters; DoRA is merged
    modes = {n: backend.adapter_mode(n) for n in adapters}
    assert modes == {"qv": "runtime", "mlp": "runtime", "dora": "merged"}
    for name, (_, peft_model) in adapters.items():
        changed = 0
        for prompt in PROMPTS:
            got = backend.generate_ids(tokenizer(prompt)["input_ids"], 16, adapter=name)
            assert got == _torch_greedy(peft_model, tokenizer, prompt, 16), (name, prompt)
            changed += got != base[prompt]
        assert changed > 0, f"adapter {name} must change some outputs"
    # the base is still the base with adapters declared on its pipeline
    for prompt in PROMPTS:
        assert backend.generate_ids(tokenizer(prompt)["input_ids"], 16) == base[prompt]
    backend.unload_adapter("qv")
    with pytest.raises(AdapterNotLoaded):  # the compositor's cue to load it again
        backend.generate_ids([1, 2], 2, adapter="qv")
    with pytest.raises(AdapterNotFound):
        backend.adapter_mode("qv")
    mlp_model = adapters["mlp"][1]
    ids = tokenizer(PROMPTS[0])["input_ids"]
    assert backend.generate_ids(ids, 16, adapter="mlp") == _torch_greedy(
        mlp_model, tokenizer, PROMPTS[0], 16
    )
    for name in ("mlp", "dora"):
        backend.unload_adapter(name)
    assert backend.loaded_adapters == []


def test_kv_cache_is_model_state(tiny, fp32_backend) -> None:
    import openvino as ov

    model, tokenizer = tiny
    ir = ov.Core().read_model(fp32_backend.base_ir / MODEL_XML)
    names = {port.any_name for port in ir.inputs}
    assert names == {"input_ids", "attention_mask", "position_ids", "beam_idx"}
    assert [port.any_name for port in ir.outputs] == ["logits"]
    layers = model.config.num_hidden_layers
    assert len(ir.get_variables()) == 2 * layers  # a key and a value cache per layer
    # one prefill fills the cache with the prompt's keys/values; a step then reads one token
    ids = np.asarray([tokenizer(PROMPTS[0])["input_ids"]])
    compiled = ov.Core().compile_model(ir, "CPU", fp32_backend._device_config())
    request = compiled.create_infer_request()
    beam = np.zeros(1, np.int32)
    feed = {"input_ids": ids, "attention_mask": np.ones_like(ids),
            "position_ids": np.arange(ids.shape[1])[None], "beam_idx": beam}  # fmt: skip
    request.infer(feed)
    assert {tuple(s.state.shape)[2] for s in request.query_state()} == {ids.shape[1]}
    nxt = int(request.get_tensor("logits").data[0, -1].argmax())
    step = {"input_ids": np.asarray([[nxt]]), "attention_mask": np.ones((1, ids.shape[1] + 1)),
            "position_ids": np.asarray([[ids.shape[1]]]), "beam_idx": beam}  # fmt: skip
    request.infer({k: np.asarray(v, dtype=feed[k].dtype) for k, v in step.items()})
    assert request.get_tensor("logits").data.shape[1] == 1
    assert {tuple(s.state.shape)[2] for s in request.query_state()} == {ids.shape[1] + 1}
    with torch.no_grad():
        ref = model(torch.tensor([ids[0].tolist() + [nxt]])).logits[0, -1].numpy()
    np.testing.assert_allclose(request.get_tensor("logits").data[0, -1], ref, atol=1e-4)


def test_int8_shrinks_weights_and_keeps_perplexity(tiny, fp32_backend, ov_cache) -> None:
    import openvino as ov

    model, tokenizer = tiny
    int8 = OpenVINOBackend(model, tokenizer, weight_format="int8", cache_dir=ov_cache)
    core = ov.Core()
    size8 = weight_bytes(core.read_model(int8.base_ir / MODEL_XML))
    size32 = weight_bytes(core.read_model(fp32_backend.base_ir / MODEL_XML))
    assert size8 < 0.4 * size32, (size8, size32)
    ppl_fp32 = perplexity_from_nll(*fp32_backend.token_nll(HELD_OUT))
    ppl_int8 = perplexity_from_nll(*int8.token_nll(HELD_OUT))
    with torch.no_grad():
        nll = [
            model(**(enc := tokenizer(t, return_tensors="pt")), labels=enc["input_ids"]).loss.item()
            for t in HELD_OUT
        ]
        counts = [len(tokenizer(t)["input_ids"]) - 1 for t in HELD_OUT]
    ppl_torch = float(np.exp(np.dot(nll, counts) / sum(counts)))
    assert ppl_fp32 == pytest.approx(ppl_torch, rel=1e-3)
    assert abs(ppl_int8 / ppl_fp32 - 1) <= INT8_PPL_TOLERANCE
    ids = np.asarray([tokenizer(HELD_OUT[0])["input_ids"]])
    assert not np.array_equal(int8.logits(ids), fp32_backend.logits(ids))
    # the same weights and format again: the export on disk is reused
    again = OpenVINOBackend(model, tokenizer, weight_format="int8", cache_dir=ov_cache)
    assert again.base_ir == int8.base_ir


def test_generate_matches_transformers_backend_stop_eos_and_usage(tiny, fp32_backend) -> None:
    model, tokenizer = tiny
    hf = TransformersBackend(model, tokenizer)
    requests = [
        GenerationRequest(prompt=PROMPTS[0], max_new_tokens=20),
        GenerationRequest(prompt=PROMPTS[1], max_new_tokens=20, stop=(" the",)),
        GenerationRequest(prompt=PROMPTS[2], max_new_tokens=3),
    ]
    for request in requests:
        a, b = fp32_backend.generate(request), hf.generate(request)
        assert (a.text, a.prompt_tokens, a.completion_tokens, a.finish_reason) == (
            b.text, b.prompt_tokens, b.completion_tokens, b.finish_reason,
        )  # fmt: skip
    # EOS: a backend whose EOS is a token the model does produce stops there, counting it
    eos_tok = copy.deepcopy(tokenizer)
    eos_id = fp32_backend.generate_ids(tokenizer(PROMPTS[0])["input_ids"], 8)[5]
    eos_tok.eos_token = eos_tok.convert_ids_to_tokens(eos_id)
    with_eos = copy.copy(fp32_backend)
    with_eos.tokenizer = eos_tok
    a = with_eos.generate(requests[0])
    b = TransformersBackend(model, eos_tok).generate(requests[0])
    assert a.finish_reason == b.finish_reason == "stop"
    assert a.completion_tokens == b.completion_tokens <= 6 and a.text == b.text


def test_streaming_adds_up_to_the_unstreamed_text(tiny, fp32_backend) -> None:
    _, tokenizer = tiny

    async def stream(request: GenerationRequest) -> tuple[str, Generation, int]:
        deltas = TextDeltas(
            lambda ids: tokenizer.decode(ids, skip_special_tokens=True), request.stop
        )
        text, tokens = "", 0
        async for item in fp32_backend.astream(request):
            if isinstance(item, Generation):
                return text + deltas.finish(item.text), item, tokens
            tokens += 1
            text += deltas.push(item)
        raise AssertionError("no final Generation")

    for request in (
        GenerationRequest(prompt=PROMPTS[3], max_new_tokens=24),
        GenerationRequest(prompt=PROMPTS[1], max_new_tokens=24, stop=(" the",)),
    ):
        text, final, tokens = asyncio.run(stream(request))
        whole = fp32_backend.generate(request)
        assert text == whole.text == final.text
        assert tokens == final.completion_tokens == whole.completion_tokens


def test_sampling_is_seeded_and_errors_are_clear(tiny, fp32_backend, tmp_path) -> None:
    model, tokenizer = tiny
    backend = fp32_backend
    ids = tokenizer(PROMPTS[1])["input_ids"]
    a = backend.generate_ids(ids, 12, temperature=1.0, top_p=0.9, seed=5)
    assert a == backend.generate_ids(ids, 12, temperature=1.0, top_p=0.9, seed=5)
    draws = {tuple(backend.generate_ids(ids, 12, temperature=1.5, seed=s)) for s in range(4)}
    assert len(draws) > 1, "different seeds must give different samples"
    with pytest.raises(InvalidRequest, match="not present"):
        OpenVINOBackend(model, tokenizer, device="NO_SUCH_DEVICE")
    with pytest.raises(AdapterLoadError, match="adapter_config.json"):
        backend.load_adapter("x", str(tmp_path))
    with pytest.raises(InvalidRequest, match="no tokens"):
        backend.generate_ids([], 3)
    with pytest.raises(InvalidRequest, match="context length"):
        backend.generate(GenerationRequest(prompt=PROMPTS[0], max_new_tokens=10_000))


def test_tampered_adapter_never_reaches_the_backend(tiny, fp32_backend, adapters, tmp_path):
    """The compositor loads ``registry.verified_path`` (signature checked) into the backend:
    a changed byte is refused before a weight is read; files changed after a load do not
    change what the loaded adapter generates."""
    from qlp_ray.core.config import load_config
    from qlp_ray.registry.signing import init_keys
    from qlp_ray.registry.store import Registry

    _, tokenizer = tiny
    cfg = load_config(overrides={"paths": {"home": str(tmp_path / "home")}}, environ={})
    init_keys(cfg.paths.keys)
    registry = Registry(cfg)
    src, _ = adapters["qv"]
    centroid = (np.ones(384) / np.sqrt(384)).tolist()
    rec = registry.register(
        src, adapter_id="ml", domain="ml", base_model="builtin:tiny-llama",
        metadata={"data_hash": "ab" * 32, "method": "lora", "centroid": centroid,
                  "metrics": {"eval_loss_before": 3.0, "eval_loss_after": 2.0}},
    )  # fmt: skip
    backend = fp32_backend
    backend.load_adapter("ml@1", str(registry.verified_path("ml")))
    request = GenerationRequest(prompt=PROMPTS[0], max_new_tokens=12)
    before = backend.generate(request, "ml@1").text
    weights = rec.path / "adapter_model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-3] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(SignatureError):
        backend.load_adapter("ml@1b", str(registry.verified_path("ml")))
    assert "ml@1b" not in backend.loaded_adapters
    backend.load_adapter("mlp", str(adapters["mlp"][0]))  # rebuilds the pipeline
    assert backend.generate(request, "ml@1").text == before
    assert json.loads((rec.path / "adapter_config.json").read_text())["r"] == 4
    for name in ("ml@1", "mlp"):
        backend.unload_adapter(name)
