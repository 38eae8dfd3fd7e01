"""OpenVINO inference backend: base model (+ merged PEFT adapter) exported to IR.

Export path: the torch causal LM (for an adapter: a copy with the LoRA weights merged
in by ``merge_and_unload``) is wrapped to return logits for ``(input_ids,
attention_mask)`` with dynamic batch and length, converted by ``openvino.convert_model``,
optionally weight-compressed by NNCF (``int8`` = INT8 asymmetric per channel, ``int4`` =
INT4 symmetric, group size 32, with INT8 for the rest), and compiled for a device
(``CPU`` here; ``NPU``/``GPU`` where present). On CPU the inference precision is pinned
to f32 so fp32 IR matches torch (OpenVINO would otherwise pick bf16 on CPUs that have it).

Generation recomputes the whole sequence each step (the IR is exported without a KV
cache), greedy for ``temperature == 0`` else temperature / top-p sampling with a seed.
"""

from __future__ import annotations

import copy
import logging
import time
from pathlib import Path
from typing import Any, Literal

import numpy as np

from qlp_ray.core.errors import AdapterLoadError, AdapterNotFound, InvalidRequest
from qlp_ray.models.backend import Generation, GenerationRequest, InferenceBackend

logger = logging.getLogger(__name__)

WeightFormat = Literal["fp32", "int8", "int4"]
WEIGHT_FORMATS = ("fp32", "int8", "int4")


def export_to_openvino(model: Any, weight_format: WeightFormat = "fp32") -> Any:
    """Convert a torch causal LM to an ``openvino.Model`` (logits for ids + mask)."""
    import openvino as ov
    import torch

    if weight_format not in WEIGHT_FORMATS:
        raise InvalidRequest(
            f"weight_format must be one of {WEIGHT_FORMATS}, got {weight_format!r}"
        )

    class _Logits(torch.nn.Module):
        def __init__(self, lm: Any) -> None:
            super().__init__()
            self.lm = lm

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
            return self.lm(
                input_ids=input_ids, attention_mask=attention_mask, use_cache=False
            ).logits

    t0 = time.perf_counter()
    model = model.eval()
    example = torch.ones((1, 8), dtype=torch.long)
    dyn = ov.PartialShape([-1, -1])
    with torch.no_grad():
        ov_model = ov.convert_model(
            _Logits(model),
            example_input={"input_ids": example, "attention_mask": example},
            input=[("input_ids", dyn, ov.Type.i64), ("attention_mask", dyn, ov.Type.i64)],
        )
    if weight_format != "fp32":
        import nncf

        if weight_format == "int8":
            ov_model = nncf.compress_weights(ov_model, mode=nncf.CompressWeightsMode.INT8_ASYM)
        else:
            ov_model = nncf.compress_weights(
                ov_model, mode=nncf.CompressWeightsMode.INT4_SYM, group_size=32, ratio=1.0
            )
    logger.info(
        "exported model to OpenVINO IR (%s) in %.1f s", weight_format, time.perf_counter() - t0
    )
    return ov_model


def merge_adapter(base_model: Any, adapter_path: str | Path) -> Any:
    """A copy of ``base_model`` with the PEFT adapter at ``adapter_path`` merged in."""
    from peft import PeftModel

    path = Path(adapter_path)
    if not (path / "adapter_config.json").is_file():
        raise AdapterLoadError(f"no adapter_config.json in {path}")
    if not (path / "adapter_model.safetensors").is_file():
        raise AdapterLoadError(f"no adapter_model.safetensors in {path} (pickle is never loaded)")
    try:
        peft_model = PeftModel.from_pretrained(copy.deepcopy(base_model), str(path))
        return peft_model.merge_and_unload().eval()
    except (ValueError, RuntimeError, KeyError) as exc:
        raise AdapterLoadError(f"adapter {path} does not fit the base model: {exc}") from exc


class OpenVINOBackend(InferenceBackend):
    """Serves one base model and merged adapters as compiled OpenVINO models."""

    name = "openvino"

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        *,
        device: str = "CPU",
        weight_format: WeightFormat = "fp32",
        max_positions: int | None = None,
    ) -> None:
        import openvino as ov

        self._core = ov.Core()
        if device not in self._core.available_devices and device.split(".")[0] not in (
            d.split(".")[0] for d in self._core.available_devices
        ):
            raise InvalidRequest(
                f"OpenVINO device {device!r} is not present (have {self._core.available_devices})"
            )
        self.device = device
        self.weight_format = weight_format
        self.tokenizer = tokenizer
        self._base = model.eval()
        self.max_positions = max_positions or int(
            getattr(model.config, "max_position_embeddings", 2048)
        )
        self._compiled: dict[str | None, Any] = {
            None: self._compile(export_to_openvino(model, weight_format))
        }

    @classmethod
    def from_pretrained(cls, path: str | Path, **kwargs: Any) -> OpenVINOBackend:
        """Load a Hugging Face model directory (safetensors) and its tokenizer."""
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(str(path))
        model = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32)
        return cls(model, tokenizer, **kwargs)

    def _compile(self, ov_model: Any) -> Any:
        config = {"INFERENCE_PRECISION_HINT": "f32"} if self.device == "CPU" else {}
        return self._core.compile_model(ov_model, self.device, config)

    # ----------------------------------------------------------------- adapters
    def load_adapter(self, name: str, path: str) -> None:
        merged = merge_adapter(self._base, path)
        self._compiled[name] = self._compile(export_to_openvino(merged, self.weight_format))
        logger.info(
            "loaded adapter %s into OpenVINO (%s, %s)", name, self.device, self.weight_format
        )

    def unload_adapter(self, name: str) -> None:
        if name is not None:
            self._compiled.pop(name, None)

    @property
    def loaded_adapters(self) -> list[str]:
        return [n for n in self._compiled if n is not None]

    # --------------------------------------------------------------- inference
    def _model(self, adapter: str | None) -> Any:
        if adapter not in self._compiled:
            raise AdapterNotFound(f"adapter {adapter!r} is not loaded in the OpenVINO backend")
        return self._compiled[adapter]

    def logits(self, input_ids: np.ndarray, adapter: str | None = None) -> np.ndarray:
        """Logits ``(batch, seq, vocab)`` for int token ids ``(batch, seq)``."""
        ids = np.asarray(input_ids, dtype=np.int64)
        if ids.ndim != 2 or ids.shape[1] == 0:
            raise InvalidRequest(
                f"input_ids must be a non-empty (batch, seq) array, got {ids.shape}"
            )
        return self._model(adapter)({"input_ids": ids, "attention_mask": np.ones_like(ids)})[0]

    def generate_ids(
        self,
        prompt_ids: list[int],
        max_new_tokens: int,
        *,
        temperature: float = 0.0,
        top_p: float = 1.0,
        seed: int | None = None,
        adapter: str | None = None,
    ) -> list[int]:
        """Generated token ids (without the prompt); stops at EOS."""
        if not prompt_ids:
            raise InvalidRequest("the prompt has no tokens")
        model = self._model(adapter)
        rng = np.random.default_rng(seed)
        ids = list(prompt_ids)
        out: list[int] = []
        eos = self.tokenizer.eos_token_id
        for _ in range(max_new_tokens):
            window = np.asarray([ids[-self.max_positions :]], dtype=np.int64)
            logits = model({"input_ids": window, "attention_mask": np.ones_like(window)})[0][0, -1]
            token = _pick(logits, temperature, top_p, rng)
            out.append(token)
            ids.append(token)
            if token == eos:
                break
        return out

    def generate(self, request: GenerationRequest, adapter: str | None = None) -> Generation:
        prompt_ids = self.tokenizer(request.prompt, add_special_tokens=True)["input_ids"]
        new = self.generate_ids(
            prompt_ids,
            request.max_new_tokens,
            temperature=request.temperature,
            top_p=request.top_p,
            seed=request.seed,
            adapter=adapter,
        )
        finish = "stop" if new and new[-1] == self.tokenizer.eos_token_id else "length"
        text = self.tokenizer.decode(new, skip_special_tokens=True)
        for stop in request.stop:
            if stop and stop in text:
                text, finish = text[: text.index(stop)], "stop"
        return Generation(
            text=text,
            prompt_tokens=len(prompt_ids),
            completion_tokens=len(new),
            finish_reason=finish,
            extra={"backend": self.name, "device": self.device, "weights": self.weight_format},
        )

    def token_nll(self, texts: list[str], adapter: str | None = None) -> tuple[float, int]:
        """(summed next-token negative log-likelihood, number of predicted tokens) over ``texts``.

        The perplexity is ``qlp_ray.evaluate.metrics.perplexity_from_nll(*token_nll(texts))``.
        """
        nll, count = 0.0, 0
        for text in texts:
            ids = self.tokenizer(text, add_special_tokens=True)["input_ids"][: self.max_positions]
            if len(ids) < 2:
                continue
            logits = self.logits(np.asarray([ids]), adapter)[0, :-1].astype(np.float64)
            logz = np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1)) + logits.max(-1)
            nll += float((logz - logits[np.arange(len(ids) - 1), ids[1:]]).sum())
            count += len(ids) - 1
        if count == 0:
            raise InvalidRequest("no text with at least two tokens to score")
        return nll, count


def _pick(logits: np.ndarray, temperature: float, top_p: float, rng: np.random.Generator) -> int:
    if temperature <= 0:
        return int(np.argmax(logits))
    z = logits.astype(np.float64) / temperature
    p = np.exp(z - z.max())
    p /= p.sum()
    if top_p < 1.0:
        order = np.argsort(-p)
        keep = order[: int(np.searchsorted(np.cumsum(p[order]), top_p)) + 1]
        mask = np.zeros_like(p)
        mask[keep] = p[keep]
        p = mask / mask.sum()
    return int(rng.choice(len(p), p=p))


__all__ = ["OpenVINOBackend", "WEIGHT_FORMATS", "export_to_openvino", "merge_adapter"]
