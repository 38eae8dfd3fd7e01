"""``model.dtype`` on each device (pure: the device facts are passed in), and where it
lands: vLLM's engine arguments and the mixed-precision flags of the SFT and TRL configs."""

from __future__ import annotations

import pytest

from qlp_ray.core.config import load_config
from qlp_ray.core.errors import ConfigError
from qlp_ray.models import precision
from qlp_ray.models.precision import (
    DeviceFacts,
    planned_dtype,
    resolve_dtype,
    trainer_flags,
)
from qlp_ray.models.vllm_backend import engine_kwargs_for

AMPERE = DeviceFacts("cuda", bf16=True, name="NVIDIA A100")
TURING = DeviceFacts("cuda", bf16=False, name="Tesla T4")
CPU = DeviceFacts("cpu")


@pytest.mark.parametrize(
    ("requested", "facts", "expected"),
    [
        ("auto", AMPERE, "bfloat16"),
        ("auto", TURING, "float16"),
        ("auto", CPU, "float32"),
        ("float16", AMPERE, "float16"),
        ("float16", TURING, "float16"),
        ("bfloat16", AMPERE, "bfloat16"),
        ("float32", AMPERE, "float32"),
        ("float32", TURING, "float32"),
        # half precision is a GPU setting: on CPU it falls back to float32
        ("bfloat16", CPU, "float32"),
        ("float16", CPU, "float32"),
    ],
)
def test_dtype_resolution_table(requested, facts, expected):
    assert resolve_dtype(requested, facts) == expected


def test_bfloat16_on_a_gpu_without_it_is_a_config_error_naming_the_gpu():
    with pytest.raises(ConfigError, match="'bfloat16' but Tesla T4 does not support"):
        resolve_dtype("bfloat16", TURING)
    with pytest.raises(ConfigError, match="model.dtype"):
        resolve_dtype("fp8", AMPERE)


def test_config_section_and_plan_entry():
    assert load_config(environ={}).model.dtype == "auto"
    with pytest.raises(ConfigError, match="dtype"):
        load_config(environ={}, overrides={"model": {"dtype": "half"}})
    assert planned_dtype("auto", "cpu") == "float32"
    assert planned_dtype("float16", "cpu") == "float32"
    assert planned_dtype("auto", "cuda").startswith("bfloat16 (float16 on a GPU")
    assert planned_dtype("float16", "cuda") == "float16"


def test_vllm_engine_args_carry_the_resolved_dtype():
    common = dict(max_loras=4, max_lora_rank=8, gpu_memory_utilization=0.8, max_model_len=256)
    gpu = engine_kwargs_for("m", cuda=True, dtype=resolve_dtype("auto", AMPERE), **common)
    assert (gpu["dtype"], gpu["gpu_memory_utilization"], gpu["enforce_eager"]) == (
        "bfloat16",
        0.8,
        False,
    )
    t4 = engine_kwargs_for("m", cuda=True, dtype=resolve_dtype("auto", TURING), **common)
    assert t4["dtype"] == "float16"
    cpu = engine_kwargs_for("m", cuda=False, dtype=resolve_dtype("bfloat16", CPU), **common)
    assert cpu["dtype"] == "float32" and "gpu_memory_utilization" not in cpu


def test_training_mixed_precision_follows_model_dtype_on_gpu_only(monkeypatch):
    from qlp_ray.train._rlhf_common import device_args
    from qlp_ray.train.sft import resolve_precision

    assert trainer_flags("auto", AMPERE) == {"bf16": True, "fp16": False}
    assert trainer_flags("auto", TURING) == {"bf16": False, "fp16": True}
    assert trainer_flags("float32", AMPERE) == {"bf16": False, "fp16": False}
    assert trainer_flags("bfloat16", CPU) == {"bf16": False, "fp16": False}
    # this machine has no GPU: the TRL configs train in fp32 on CPU
    assert device_args("bfloat16") == {
        "use_cpu": True,
        "bf16": False,
        "fp16": False,
        "gradient_checkpointing": False,
    }
    assert resolve_precision("auto", use_cpu=True, model_dtype="float16") == "fp32"
    # the facts of a GPU worker (what torch.cuda reports there)
    for facts, dtype, expected in [
        (AMPERE, "auto", "bf16"),
        (TURING, "auto", "fp16"),
        (AMPERE, "float16", "fp16"),
        (AMPERE, "float32", "fp32"),
    ]:
        monkeypatch.setattr(precision, "local_facts", lambda use_gpu=True, f=facts: f)
        assert resolve_precision("auto", use_cpu=False, model_dtype=dtype) == expected
        flags = device_args(dtype)
        assert (flags["bf16"], flags["fp16"]) == (expected == "bf16", expected == "fp16")
        assert "use_cpu" not in flags
    # an explicit train.precision wins over model.dtype
    assert resolve_precision("fp32", use_cpu=False, model_dtype="bfloat16") == "fp32"
