"""The vLLM backend: selectable by config; real multi-LoRA generation only with vllm + a GPU."""

from __future__ import annotations

import copy

import pytest

from qlp_ray.core.config import load_config
from qlp_ray.core.errors import ConfigError
from qlp_ray.models.vllm_backend import VLLMBackend, vllm_unavailable_reason

REASON = vllm_unavailable_reason()


def test_backend_is_chosen_by_config_and_defaults_to_transformers():
    assert load_config(environ={}).serve.backend == "transformers"
    cfg = load_config(overrides={"serve": {"backend": "vllm"}}, environ={})
    assert cfg.serve.backend == "vllm"
    with pytest.raises(ConfigError, match="serve.backend"):
        load_config(overrides={"serve": {"backend": "onnx"}}, environ={})


@pytest.mark.skipif(REASON is None, reason="vllm and a GPU are available here")
def test_without_vllm_or_gpu_selecting_it_fails_with_the_reason(tmp_path):
    from qlp_ray.serve.compositor import create_backend

    with pytest.raises(ConfigError, match="'vllm' but vllm"):
        VLLMBackend(str(tmp_path))
    cfg = load_config(
        overrides={"paths": {"home": str(tmp_path)}, "serve": {"backend": "vllm"}}, environ={}
    )
    with pytest.raises(ConfigError, match=REASON.split(" (")[0]):
        create_backend(cfg)  # fails before any base model is built
    assert not (tmp_path / "models").exists()


@pytest.mark.skipif(REASON is not None, reason=REASON or "")
def test_vllm_multi_lora_generation(tmp_path):  # pragma: no cover - GPU machines only
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from qlp_ray.models.backend import GenerationRequest
    from qlp_ray.models.tiny import build_tiny_model

    cfg = load_config(overrides={"paths": {"home": str(tmp_path)}}, environ={})
    base_dir = build_tiny_model(cfg)
    base = AutoModelForCausalLM.from_pretrained(str(base_dir))
    dirs = []
    for seed in (1, 2):
        torch.manual_seed(seed)
        lora = LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"],
                          init_lora_weights=False)  # fmt: skip
        model = get_peft_model(copy.deepcopy(base), lora)
        with torch.no_grad():
            for name, p in model.named_parameters():
                if "lora_B" in name:
                    p.normal_(0, 2.0)
        out = tmp_path / f"adapter{seed}"
        model.save_pretrained(str(out))
        dirs.append(out)
    backend = VLLMBackend(str(base_dir), max_loras=2, max_lora_rank=8,
                          gpu_memory_utilization=0.3)  # fmt: skip
    for i, d in enumerate(dirs):
        backend.load_adapter(f"a{i}", str(d))
    request = GenerationRequest("def train(model):", max_new_tokens=8)
    texts = {name: backend.generate(request, name).text for name in (None, "a0", "a1")}
    assert len(set(texts.values())) == 3  # each adapter changes greedy output
    backend.unload_adapter("a0")
    assert backend.loaded_adapters == ["a1"]
