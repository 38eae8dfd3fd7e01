"""OpenVINO backend: fp32 IR greedy tokens equal torch's; INT8 perplexity stays close."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("openvino")
pytest.importorskip("nncf")

import torch  # noqa: E402

from qlp_ray.core.errors import AdapterLoadError, AdapterNotFound, InvalidRequest  # noqa: E402
from qlp_ray.evaluate.metrics import perplexity_from_nll  # noqa: E402
from qlp_ray.models.backend import GenerationRequest  # noqa: E402
from qlp_ray.models.openvino_backend import OpenVINOBackend  # noqa: E402

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


@pytest.fixture(scope="module")
def adapter_dir(tiny, tmp_path_factory):
    from peft import LoraConfig, get_peft_model

    model, _ = tiny
    torch.manual_seed(3)
    peft_model = get_peft_model(
        __import__("copy").deepcopy(model),
        LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False),
    )
    out = tmp_path_factory.mktemp("adapter")
    peft_model.save_pretrained(out, safe_serialization=True)
    return out, peft_model.eval()


@pytest.fixture(scope="module")
def fp32_backend(tiny) -> OpenVINOBackend:
    model, tokenizer = tiny
    return OpenVINOBackend(model, tokenizer, device="CPU", weight_format="fp32")


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


def test_fp32_ir_greedy_tokens_equal_torch_with_and_without_adapter(
    tiny, fp32_backend, adapter_dir
) -> None:
    model, tokenizer = tiny
    backend = fp32_backend
    for prompt in PROMPTS:
        ids = tokenizer(prompt)["input_ids"]
        assert backend.generate_ids(ids, 12) == _torch_greedy(model, tokenizer, prompt, 12)
    path, peft_model = adapter_dir
    backend.load_adapter("lora", str(path))
    assert backend.loaded_adapters == ["lora"]
    changed = 0
    for prompt in PROMPTS:
        ids = tokenizer(prompt)["input_ids"]
        ov_tokens = backend.generate_ids(ids, 12, adapter="lora")
        assert ov_tokens == _torch_greedy(peft_model, tokenizer, prompt, 12)
        changed += ov_tokens != backend.generate_ids(ids, 12)
    assert changed > 0, "the merged adapter must change some outputs"
    gen = backend.generate(GenerationRequest(prompt=PROMPTS[0], max_new_tokens=5), adapter="lora")
    assert gen.completion_tokens <= 5 and gen.extra["device"] == "CPU"
    backend.unload_adapter("lora")
    with pytest.raises(AdapterNotFound):
        backend.generate_ids([1, 2], 2, adapter="lora")


def test_int8_perplexity_within_tolerance(tiny, fp32_backend) -> None:
    model, tokenizer = tiny
    fp32 = fp32_backend
    int8 = OpenVINOBackend(model, tokenizer, weight_format="int8")
    ppl_fp32 = perplexity_from_nll(*fp32.token_nll(HELD_OUT))
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
    logits8 = int8.logits(np.asarray([tokenizer(HELD_OUT[0])["input_ids"]]))
    logits32 = fp32.logits(np.asarray([tokenizer(HELD_OUT[0])["input_ids"]]))
    assert not np.array_equal(logits8, logits32), "INT8 weights must actually differ"


def test_sampling_is_seeded_and_errors_are_clear(tiny, fp32_backend, tmp_path) -> None:
    model, tokenizer = tiny
    backend = fp32_backend
    ids = tokenizer(PROMPTS[1])["input_ids"]
    a = backend.generate_ids(ids, 8, temperature=1.0, top_p=0.9, seed=5)
    assert a == backend.generate_ids(ids, 8, temperature=1.0, top_p=0.9, seed=5)
    with pytest.raises(InvalidRequest, match="not present"):
        OpenVINOBackend(model, tokenizer, device="NO_SUCH_DEVICE")
    with pytest.raises(AdapterLoadError, match="adapter_config.json"):
        backend.load_adapter("x", str(tmp_path))
    with pytest.raises(InvalidRequest, match="no tokens"):
        backend.generate_ids([], 3)
