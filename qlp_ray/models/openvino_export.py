"""Stateful OpenVINO export of a torch causal LM (KV cache inside the model), for openvino-genai.

The model is traced with explicit past keys/values in and present keys/values out
(``transformers``' ``DynamicCache`` rebuilt from the inputs), converted by
``openvino.convert_model``, and made *stateful* the way ``optimum-intel`` does it: a
``beam_idx`` input reorders the cache rows, the cache inputs/outputs become OpenVINO
state variables (``ReadValue``/``Assign``) whose initial value is an empty cache of the
batch's size. The result has the inputs ``openvino_genai.LLMPipeline`` expects
(``input_ids``, ``attention_mask``, ``position_ids``, ``beam_idx``) and one output,
``logits``. (``optimum-intel`` 2.2 itself needs ``transformers<5.6``; this project pins 5.23.)

Weight constants keep the torch parameter names (``self.model.layers.0.self_attn.q_proj
.weight``), which is what openvino-genai's runtime LoRA matches PEFT tensor names against.
NNCF compresses the weights: ``int8`` = INT8 asymmetric per channel, ``int4`` = INT4
symmetric, group size 32 (INT8 for what INT4 cannot take).

:func:`ir_dir` writes the model, its tokenizer (``openvino-tokenizers``, when the
tokenizer converts), ``config.json`` and ``generation_config.json`` into a folder named by
a digest of the weights, config and format, and reuses the folder when it exists.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Literal

import numpy as np

from qlp_ray.core.errors import InvalidRequest

logger = logging.getLogger(__name__)

WeightFormat = Literal["fp32", "int8", "int4"]
WEIGHT_FORMATS = ("fp32", "int8", "int4")
EXPORT_VERSION = "stateful-1"  # part of the cache key: bump when the exported graph changes
MODEL_XML = "openvino_model.xml"
_READY = "qlp_ov.json"


def _kv_names(layers: int) -> tuple[list[str], list[str]]:
    past = [f"past_key_values.{i}.{kv}" for i in range(layers) for kv in ("key", "value")]
    present = [f"present.{i}.{kv}" for i in range(layers) for kv in ("key", "value")]
    return past, present


def _kv_geometry(config: Any) -> tuple[int, int, int]:
    layers = int(config.num_hidden_layers)
    heads = int(getattr(config, "num_key_value_heads", None) or config.num_attention_heads)
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    return layers, heads, int(head_dim)


def export_stateful(model: Any, weight_format: WeightFormat = "fp32") -> Any:
    """An ``openvino.Model`` of ``model`` (a transformers decoder-only LM) with its KV cache
    as state, weights compressed to ``weight_format``."""
    import openvino as ov
    import torch
    from transformers import DynamicCache

    if weight_format not in WEIGHT_FORMATS:
        raise InvalidRequest(
            f"weight_format must be one of {WEIGHT_FORMATS}, got {weight_format!r}"
        )
    config = model.config
    layers, heads, head_dim = _kv_geometry(config)
    if not hasattr(model, "model") or not hasattr(model, "lm_head"):
        raise InvalidRequest(
            f"{type(model).__name__} is not a decoder-only LM with .model and .lm_head"
        )

    class _WithCache(torch.nn.Module):
        # attributes named as in the LM, so constants keep the names runtime LoRA matches
        def __init__(self, lm: Any) -> None:
            super().__init__()
            self.model = lm.model
            self.lm_head = lm.lm_head

        def forward(self, input_ids, attention_mask, position_ids, *past):  # type: ignore[no-untyped-def]
            cache = DynamicCache(config=config)
            for i, layer in enumerate(cache.layers):
                layer.dtype, layer.device = past[2 * i].dtype, past[2 * i].device
                layer.keys, layer.values = past[2 * i], past[2 * i + 1]
                layer.is_initialized = True
            out = self.model(
                input_ids=input_ids,
                attention_mask=attention_mask,
                position_ids=position_ids,
                past_key_values=cache,
                use_cache=True,
            )
            present = []
            for layer in out.past_key_values.layers:
                present += [layer.keys, layer.values]
            return (self.lm_head(out.last_hidden_state), *present)

    t0 = time.perf_counter()
    past_names, present_names = _kv_names(layers)
    past = [torch.zeros(1, heads, 2, head_dim) for _ in past_names]
    example = (
        torch.ones((1, 3), dtype=torch.long),
        torch.ones((1, 5), dtype=torch.long),
        torch.arange(2, 5).view(1, -1),
        *past,
    )
    with torch.no_grad():
        ov_model = ov.convert_model(_WithCache(model.eval()), example_input=example)
    in_names = ["input_ids", "attention_mask", "position_ids", *past_names]
    for port, name in zip(ov_model.inputs, in_names, strict=True):
        port.get_tensor().set_names({name})
    for port, name in zip(ov_model.outputs, ["logits", *present_names], strict=True):
        port.get_tensor().set_names({name})
    shapes = {ov_model.input(n): ov.PartialShape([-1, -1]) for n in in_names[:3]}
    shapes |= {ov_model.input(n): ov.PartialShape([-1, heads, -1, head_dim]) for n in past_names}
    ov_model.reshape(shapes)
    _make_stateful(ov_model, past_names, present_names)
    ov_model = compress_weights(ov_model, weight_format)
    logger.info(
        "exported a stateful OpenVINO model (%s, %d layers) in %.1f s",
        weight_format, layers, time.perf_counter() - t0,
    )  # fmt: skip
    return ov_model


def _make_stateful(ov_model: Any, past: list[str], present: list[str]) -> None:
    """Cache inputs/outputs -> state variables, with a ``beam_idx`` reorder and an empty
    initial cache of the batch's size (as optimum-intel's ``patch_stateful``)."""
    import openvino as ov
    import openvino.opset13 as ops
    from openvino._offline_transformations import apply_make_stateful_transformation

    beam_idx = ops.parameter([-1], ov.Type.i32, name="beam_idx")
    beam_idx.output(0).get_tensor().set_names({"beam_idx"})
    ov_model.add_parameters([beam_idx])
    for name in past:
        port = ov_model.input(name)
        consumers = list(port.get_target_inputs())
        reordered = ops.gather(port, beam_idx, ops.constant(0))
        for consumer in consumers:
            consumer.replace_source_output(reordered.output(0))
    ov_model.validate_nodes_and_infer_types()
    apply_make_stateful_transformation(ov_model, dict(zip(past, present, strict=True)))
    ids = ov_model.input("input_ids")
    batch = ops.gather(ops.shape_of(ids, output_type="i64"), ops.constant([0]), ops.constant(0))
    for op in ov_model.get_ops():
        if op.get_type_name() != "ReadValue":
            continue
        dims = [
            ops.constant(np.array([0 if d.is_dynamic else d.get_length()], dtype=np.int64))
            for d in op.get_output_partial_shape(0)
        ]
        dims[0] = batch
        zero = ops.constant(0.0, dtype=op.get_output_element_type(0))
        op.set_arguments([ops.broadcast(zero, ops.concat(dims, 0))])
    ov_model.validate_nodes_and_infer_types()


def compress_weights(ov_model: Any, weight_format: WeightFormat) -> Any:
    """NNCF weight compression (``fp32``: unchanged)."""
    if weight_format == "fp32":
        return ov_model
    import nncf

    if weight_format == "int8":
        return nncf.compress_weights(ov_model, mode=nncf.CompressWeightsMode.INT8_ASYM)
    return nncf.compress_weights(
        ov_model, mode=nncf.CompressWeightsMode.INT4_SYM, group_size=32, ratio=1.0
    )


def model_digest(model: Any, weight_format: str) -> str:
    """16 hex chars naming an export: weights, config, format and exporter version."""
    h = hashlib.sha256(f"{EXPORT_VERSION}|{weight_format}|".encode())
    h.update(model.config.to_json_string(use_diff=False).encode())
    for name, tensor in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().float().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def ir_dir(model: Any, tokenizer: Any, weight_format: WeightFormat, cache_root: Path) -> Path:
    """A folder openvino-genai loads (model, tokenizer IRs, configs) for ``model``: reused
    when an export of the same weights and format is already under ``cache_root``."""
    import openvino as ov

    digest = model_digest(model, weight_format)
    out = Path(cache_root) / f"{weight_format}-{digest}"
    if (out / _READY).is_file():
        logger.info("reusing the OpenVINO export %s", out)
        return out
    cache_root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".export-", dir=cache_root))
    try:
        ov_model = export_stateful(model, weight_format)
        ov.save_model(ov_model, tmp / MODEL_XML, compress_to_fp16=False)
        model.config.to_json_file(tmp / "config.json")
        if getattr(model, "generation_config", None) is not None:
            model.generation_config.to_json_file(tmp / "generation_config.json")
        tokenizer_converted = _write_tokenizer(tokenizer, tmp)
        meta = {"weight_format": weight_format, "tokenizer_ir": tokenizer_converted}
        (tmp / _READY).write_text(json.dumps(meta))
        try:
            os.replace(tmp, out)
        except OSError:  # another process finished the same export first: use that one
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _write_tokenizer(tokenizer: Any, out: Path) -> bool:
    """openvino-tokenizers IRs of ``tokenizer`` (genai's own text path; this project feeds
    token ids, so a tokenizer that does not convert is only logged)."""
    import openvino as ov

    try:
        from openvino_tokenizers import convert_tokenizer

        tok_ir, detok_ir = convert_tokenizer(tokenizer, with_detokenizer=True)
    except Exception as exc:  # an unsupported tokenizer type: ids still work
        logger.warning("tokenizer not converted to OpenVINO (%s); token ids only", exc)
        return False
    ov.save_model(tok_ir, out / "openvino_tokenizer.xml")
    ov.save_model(detok_ir, out / "openvino_detokenizer.xml")
    return True


def weight_bytes(ov_model: Any) -> int:
    """Bytes of the model's constants (the weights, compressed or not)."""
    return sum(op.get_byte_size() for op in ov_model.get_ops() if op.get_type_name() == "Constant")


__all__ = [
    "MODEL_XML",
    "WEIGHT_FORMATS",
    "WeightFormat",
    "compress_weights",
    "export_stateful",
    "ir_dir",
    "model_digest",
    "weight_bytes",
]
