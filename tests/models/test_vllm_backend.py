"""The vLLM backend: selectable by config; without vllm it fails naming the reason.

Generation through vLLM is tested in tests/vllm (run in .venv-vllm).
"""

from __future__ import annotations

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
