"""QLoRA is a GPU-only extra: a clear error without CUDA/bitsandbytes, real config with them."""

from __future__ import annotations

import pytest

from qlp_ray.core.config import load_config
from qlp_ray.core.errors import ConfigError
from qlp_ray.train.peft_setup import build_peft_config, qlora_unavailable_reason


def _cfg():
    return load_config(environ={}, overrides={"train": {"method": "qlora"}}).train


def test_qlora_without_gpu_is_a_clear_config_error():
    reason = qlora_unavailable_reason()
    if reason is None:
        pytest.skip("this machine can run QLoRA")
    with pytest.raises(ConfigError, match=r"`train.method` is 'qlora' but .*use 'lora' on CPU"):
        build_peft_config(_cfg(), 10)


def test_qlora_driver_fails_before_starting_workers(tmp_path):
    if qlora_unavailable_reason() is None:
        pytest.skip("this machine can run QLoRA")
    from qlp_ray.train.ray_train import train_adapter

    cfg = load_config(environ={}, overrides={"paths": {"home": str(tmp_path)}})
    with pytest.raises(ConfigError, match="qlora"):
        train_adapter(cfg, domain="api", data_path=tmp_path / "x.jsonl", method="qlora")


@pytest.mark.gpu
def test_qlora_config_on_gpu():
    if qlora_unavailable_reason() is not None:
        pytest.skip(qlora_unavailable_reason())
    from qlp_ray.train.peft_setup import qlora_quantization_config

    peft_cfg = build_peft_config(_cfg(), 10)
    assert peft_cfg.r == 8
    assert qlora_quantization_config().load_in_4bit
