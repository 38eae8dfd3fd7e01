"""``model.dtype``: the floating-point type the base model computes in, per device.

:func:`resolve_dtype` is pure (it takes the device's facts), so its table is tested
without a GPU. The rule:

* On a CUDA GPU, ``auto`` is ``bfloat16`` when the GPU supports it (compute capability
  8.0 and up: A100, L4, H100, RTX 30xx+), else ``float16`` (T4, V100). An explicit
  ``float32`` or ``float16`` is kept; an explicit ``bfloat16`` on a GPU without it is a
  :class:`ConfigError` (vLLM refuses it there too).
* On a CPU everything computes in ``float32``, whatever ``model.dtype`` says: an explicit
  ``bfloat16``/``float16`` is logged once and falls back. Half precision is a GPU setting,
  so one configuration serves a GPU cluster and the CPU fallback of a cluster without GPUs
  (the scheduler then places the replicas on CPU, ``hardware/replica_devices.py``).

Training follows the same value as mixed precision (the weights stay float32, the
forward/backward run under ``bf16``/``fp16`` autocast): :func:`trainer_flags`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from qlp_ray.core.errors import ConfigError

logger = logging.getLogger(__name__)

DTYPES = ("auto", "float32", "bfloat16", "float16")
HALF = ("bfloat16", "float16")
_warned: set[str] = set()


@dataclass(frozen=True)
class DeviceFacts:
    """What the dtype depends on: the device kind and whether it computes bfloat16."""

    device: str = "cpu"  # "cuda" or "cpu"
    bf16: bool = False  # a CUDA GPU with bfloat16 (torch.cuda.is_bf16_supported())
    name: str = ""  # for messages, e.g. "Tesla T4"


def resolve_dtype(requested: str, facts: DeviceFacts) -> str:
    """``model.dtype`` (``requested``) on the device described by ``facts``:
    ``"float32"``, ``"bfloat16"`` or ``"float16"``."""
    if requested not in DTYPES:
        raise ConfigError(f"`model.dtype` must be one of {list(DTYPES)}, not {requested!r}")
    if facts.device != "cuda":
        if requested in HALF and requested not in _warned:
            _warned.add(requested)
            logger.warning(
                "model.dtype=%s: this runs on CPU, which computes in float32 (half "
                "precision applies on a CUDA GPU only)",
                requested,
            )
        return "float32"
    if requested == "auto":
        return "bfloat16" if facts.bf16 else "float16"
    if requested == "bfloat16" and not facts.bf16:
        gpu = facts.name or "this GPU"
        raise ConfigError(
            f"`model.dtype` is 'bfloat16' but {gpu} does not support bfloat16 (compute "
            "capability below 8.0); use 'float16' or 'auto'"
        )
    return requested


def planned_dtype(requested: str, device_class: str) -> str:
    """What a replica placed on ``device_class`` will compute in, as far as the driver can
    tell without the GPU at hand (``auto`` on CUDA depends on the GPU's bfloat16)."""
    if device_class != "cuda":
        return resolve_dtype(requested, DeviceFacts("cpu"))
    if requested == "auto":
        return "bfloat16 (float16 on a GPU without bfloat16)"
    return requested


def local_facts(use_gpu: bool = True) -> DeviceFacts:
    """The facts of this process's device: its first CUDA GPU when ``use_gpu`` and torch
    sees one, else the CPU."""
    import torch

    if use_gpu and torch.cuda.is_available():
        return DeviceFacts(
            "cuda", bool(torch.cuda.is_bf16_supported()), torch.cuda.get_device_name(0)
        )
    return DeviceFacts("cpu")


def torch_dtype(name: str) -> Any:
    """The ``torch.dtype`` of a resolved dtype name."""
    import torch

    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]


def trainer_flags(requested: str, facts: DeviceFacts) -> dict[str, bool]:
    """``bf16``/``fp16`` of a transformers/TRL training config: mixed precision in the
    resolved dtype on a GPU, neither on CPU."""
    dtype = resolve_dtype(requested, facts)
    return {"bf16": dtype == "bfloat16", "fp16": dtype == "float16"}


__all__ = [
    "DTYPES",
    "DeviceFacts",
    "local_facts",
    "planned_dtype",
    "resolve_dtype",
    "torch_dtype",
    "trainer_flags",
]
