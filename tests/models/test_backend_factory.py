"""`serve.backend` picks the compositor's inference engine; OpenVINO matches transformers."""

from __future__ import annotations

import pytest

from qlp_ray.core.config import load_config
from qlp_ray.models.backend import GenerationRequest
from qlp_ray.models.hf_backend import TransformersBackend
from qlp_ray.serve.compositor import create_backend


@pytest.fixture(scope="module")
def small_cfg(tmp_path_factory):
    home = tmp_path_factory.mktemp("backend_home")
    return load_config(
        environ={},
        overrides={
            "paths": {"home": str(home)},
            "model": {"tiny": {"pretrain_steps": 10, "hidden_size": 64, "num_layers": 2}},
        },
    )


def test_default_backend_is_transformers(small_cfg):
    import torch

    backend = create_backend(small_cfg)
    assert isinstance(backend, TransformersBackend)
    assert backend._base.dtype == torch.float32
    # half precision is a GPU setting: the CPU decoder falls back to float32
    half = small_cfg.model_copy(deep=True)
    half.model.dtype = "bfloat16"
    assert create_backend(half)._base.dtype == torch.float32


def test_openvino_backend_generates_the_same_greedy_text(small_cfg):
    pytest.importorskip("openvino")
    ov_cfg = small_cfg.model_copy(deep=True)
    ov_cfg.serve.backend = "openvino"
    ov = create_backend(ov_cfg)
    assert ov.name == "openvino"
    hf = create_backend(small_cfg)
    req = GenerationRequest(prompt="### Instruction:\nDeploy with Helm\n\n### Response:\n",
                            max_new_tokens=8)  # fmt: skip
    a, b = ov.generate(req), hf.generate(req)
    assert a.text == b.text
    assert a.completion_tokens == b.completion_tokens > 0


def test_unknown_backend_is_a_config_error():
    from qlp_ray.core.errors import ConfigError

    with pytest.raises(ConfigError, match="serve.backend"):
        load_config(environ={}, overrides={"serve": {"backend": "tensorrt"}})
