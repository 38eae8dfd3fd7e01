"""INT8 quantization of a causal LM's linear layers with PyTorch (CPU, x86/fbgemm).

* **dynamic**: weights stored as int8, activations quantized on the fly per
  batch (``torch.ao.quantization.quantize_dynamic``). No calibration.
* **static**: weights *and* activations int8 with scales fixed ahead of time
  from a calibration set: every ``nn.Linear`` is wrapped in a
  ``QuantWrapper`` (quantize -> int8 linear -> dequantize), observers record
  activation ranges while the calibration texts run through, then
  ``convert`` freezes them.

The embedding and the output head stay in float (quantizing the LM head
costs the most quality for the least size). The NNCF / OpenVINO weight
compression path lives with the hardware backends, not here.

``torch.ao.quantization`` is deprecated upstream in favour of ``torchao``;
it still ships (and works) in torch 2.13, which this project pins.
"""

from __future__ import annotations

import copy
import logging
import warnings
from collections.abc import Sequence
from typing import Any

from qlp_ray.core.errors import InvalidRequest

logger = logging.getLogger(__name__)

KEEP_FLOAT = ("lm_head",)


def _ao():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        import torch.ao.quantization as ao
    return ao


def _engine() -> str:
    import torch

    engines = torch.backends.quantized.supported_engines
    for name in ("x86", "fbgemm", "qnnpack"):
        if name in engines:
            torch.backends.quantized.engine = name
            return name
    raise InvalidRequest(f"no int8 CPU kernel engine available (have {engines})")


def _linear_names(model: Any, skip: Sequence[str]) -> list[str]:
    import torch

    return [
        name
        for name, mod in model.named_modules()
        if isinstance(mod, torch.nn.Linear) and not any(name.endswith(s) for s in skip)
    ]


def quantize_dynamic_int8(model: Any, *, skip: Sequence[str] = KEEP_FLOAT) -> Any:
    """A copy of ``model`` with int8 dynamic quantization of its linear layers."""
    import torch

    _engine()
    names = set(_linear_names(model, skip))
    if not names:
        raise InvalidRequest("model has no nn.Linear layers to quantize")
    q = _ao().quantize_dynamic(copy.deepcopy(model).eval(), names, dtype=torch.qint8)
    logger.info("dynamic int8: quantized %d linear layers", len(names))
    return q


def quantize_static_int8(
    model: Any,
    tokenizer: Any,
    calibration_texts: Sequence[str],
    *,
    skip: Sequence[str] = KEEP_FLOAT,
    max_length: int = 128,
) -> Any:
    """A copy of ``model`` with static int8 linear layers calibrated on ``calibration_texts``."""
    import torch

    if not calibration_texts:
        raise InvalidRequest("static quantization needs a non-empty calibration set")
    ao = _ao()
    engine = _engine()
    q = copy.deepcopy(model).eval()
    names = _linear_names(q, skip)
    if not names:
        raise InvalidRequest("model has no nn.Linear layers to quantize")
    qconfig = ao.get_default_qconfig(engine)
    for name in names:
        parent_name, _, child = name.rpartition(".")
        parent = q.get_submodule(parent_name) if parent_name else q
        wrapped = ao.QuantWrapper(getattr(parent, child))
        wrapped.qconfig = qconfig
        setattr(parent, child, wrapped)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ao.prepare(q, inplace=True)
        with torch.no_grad():
            for text in calibration_texts:
                enc = tokenizer(text, return_tensors="pt", truncation=True, max_length=max_length)
                q(input_ids=enc["input_ids"])
        ao.convert(q, inplace=True)
    logger.info(
        "static int8: %d linear layers calibrated on %d texts", len(names), len(calibration_texts)
    )
    return q


__all__ = ["quantize_dynamic_int8", "quantize_static_int8"]
