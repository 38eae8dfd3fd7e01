"""Transformers + PEFT inference backend: one shared base model, many LoRA adapters by name.

All adapters live on one ``PeftModel`` wrapping the base model (vLLM-style: the base
weights are held once). ``generate(..., adapter=None)`` runs the bare base model with
adapters disabled. A lock serialises "select adapter + generate" and load/unload, so a
request never runs under another request's adapter.

Adapter weights are read only from ``adapter_model.safetensors`` (never pickle) and put
into the model with ``set_peft_model_state_dict``; a key or shape mismatch (an adapter
trained for another base model) raises ``AdapterLoadError``.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from pathlib import Path
from typing import Any

import torch
from peft import PeftConfig, PeftModel, get_peft_model, set_peft_model_state_dict
from safetensors.torch import load_file
from transformers import StoppingCriteria, StoppingCriteriaList

from qlp_ray.errors import AdapterLoadError, InvalidRequest
from qlp_ray.models.backend import Generation, GenerationRequest, InferenceBackend

logger = logging.getLogger(__name__)

ADAPTER_WEIGHTS = "adapter_model.safetensors"
ADAPTER_CONFIG = "adapter_config.json"
_PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")


class AdapterNotLoaded(KeyError):
    """``generate`` was asked for an adapter name that is not (or no longer) loaded."""


class _StopOnStrings(StoppingCriteria):
    """Stops generation once the decoded new text contains any stop string."""

    def __init__(self, tokenizer: Any, prompt_len: int, stops: tuple[str, ...]) -> None:
        self.tokenizer = tokenizer
        self.prompt_len = prompt_len
        self.stops = stops

    def __call__(self, input_ids: torch.LongTensor, scores: Any, **kwargs: Any) -> bool:
        text = self.tokenizer.decode(input_ids[0, self.prompt_len :], skip_special_tokens=True)
        return any(s in text for s in self.stops)


def check_adapter_dir(path: str | Path) -> Path:
    """The adapter directory if it holds safetensors weights + config and no pickle files."""
    p = Path(path)
    if not (p / ADAPTER_CONFIG).is_file() or not (p / ADAPTER_WEIGHTS).is_file():
        raise AdapterLoadError(
            f"adapter directory {p.name!r} needs {ADAPTER_CONFIG} and {ADAPTER_WEIGHTS}"
        )
    pickled = sorted(f.name for f in p.iterdir() if f.suffix in _PICKLE_SUFFIXES)
    if pickled:
        raise AdapterLoadError(f"adapter {p.name!r} contains pickle files {pickled}; refused")
    return p


class TransformersBackend(InferenceBackend):
    """A causal LM from transformers with LoRA adapters hot-loaded through PEFT."""

    name = "transformers"

    def __init__(self, model: Any, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        self._base = model.eval()
        self._peft: PeftModel | None = None
        self._adapters: dict[str, str] = {}
        self._lock = threading.Lock()
        self.max_positions = int(getattr(model.config, "max_position_embeddings", 0) or 0)

    # -- adapters -------------------------------------------------------------------
    @property
    def loaded_adapters(self) -> list[str]:
        return sorted(self._adapters)

    @property
    def peft_model(self) -> PeftModel | None:
        """The shared ``PeftModel`` (``None`` until the first adapter is loaded)."""
        return self._peft

    def load_adapter(self, name: str, path: str) -> None:
        """Load a verified adapter directory under ``name`` (replacing one of that name)."""
        adapter_dir = check_adapter_dir(path)
        config = PeftConfig.from_pretrained(str(adapter_dir))
        config.inference_mode = True
        weights = load_file(str(adapter_dir / ADAPTER_WEIGHTS), device="cpu")
        t0 = time.perf_counter()
        with self._lock:
            if name in self._adapters:
                self._delete_locked(name)
            try:
                if self._peft is None:
                    self._peft = get_peft_model(self._base, config, adapter_name=name)
                    self._peft.eval()
                else:
                    self._peft.add_adapter(name, config)
                result = set_peft_model_state_dict(self._peft, weights, adapter_name=name)
                missing = [k for k in result.missing_keys if f".{name}." in k]
                unexpected = list(result.unexpected_keys)
                if missing or unexpected:
                    raise AdapterLoadError(
                        f"adapter {name!r} does not fit the base model "
                        f"({len(missing)} missing, {len(unexpected)} unexpected weights)"
                    )
            except (RuntimeError, ValueError, KeyError) as exc:
                self._discard_partial_locked(name)
                if isinstance(exc, AdapterLoadError):
                    raise
                raise AdapterLoadError(f"adapter {name!r} could not be loaded: {exc}") from exc
            self._adapters[name] = str(adapter_dir)
        logger.info("loaded adapter %s in %.1f ms", name, (time.perf_counter() - t0) * 1000)

    def unload_adapter(self, name: str) -> None:
        """Free an adapter's weights; unknown names are ignored."""
        with self._lock:
            if name in self._adapters:
                self._delete_locked(name)
                logger.info("unloaded adapter %s", name)

    def _delete_locked(self, name: str) -> None:
        assert self._peft is not None
        self._peft.delete_adapter(name)
        del self._adapters[name]

    def _discard_partial_locked(self, name: str) -> None:
        if self._peft is not None and name in self._peft.peft_config:
            self._peft.delete_adapter(name)
        self._adapters.pop(name, None)

    def adapter_parameter_names(self, name: str) -> list[str]:
        """Names of the parameters that belong to adapter ``name`` (empty when unloaded)."""
        if self._peft is None:
            return []
        return [n for n, _ in self._peft.named_parameters() if f".{name}." in n]

    # -- generation -----------------------------------------------------------------
    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=True)["input_ids"])

    def generate(self, request: GenerationRequest, adapter: str | None = None) -> Generation:
        """Generate one completion with ``adapter`` (``None`` = base model, adapters off)."""
        tokens = self.tokenizer(request.prompt, return_tensors="pt", add_special_tokens=True)
        enc = {"input_ids": tokens["input_ids"], "attention_mask": tokens["attention_mask"]}
        prompt_len = int(enc["input_ids"].shape[1])
        if self.max_positions and prompt_len + request.max_new_tokens > self.max_positions:
            raise InvalidRequest(
                f"prompt ({prompt_len} tokens) + max_tokens ({request.max_new_tokens}) exceeds "
                f"the model's context length of {self.max_positions} tokens",
                param="prompt",
            )
        kwargs: dict[str, Any] = {
            "max_new_tokens": request.max_new_tokens,
            "pad_token_id": self.tokenizer.pad_token_id,
            "eos_token_id": self.tokenizer.eos_token_id,
        }
        if request.temperature > 0:
            kwargs.update(do_sample=True, temperature=request.temperature, top_p=request.top_p)
        else:
            kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        if request.stop:
            kwargs["stopping_criteria"] = StoppingCriteriaList(
                [_StopOnStrings(self.tokenizer, prompt_len, request.stop)]
            )
        t0 = time.perf_counter()
        with self._lock:
            model, ctx = self._select_locked(adapter)
            if request.seed is not None:
                torch.manual_seed(request.seed)
            with ctx, torch.inference_mode():
                out = model.generate(**enc, **kwargs)
        new_ids = out[0, prompt_len:].tolist()
        return self._finish(
            new_ids, request, adapter, (time.perf_counter() - t0) * 1000, prompt_len
        )

    def _select_locked(self, adapter: str | None) -> tuple[Any, Any]:
        if adapter is None:
            if self._peft is None:
                return self._base, contextlib.nullcontext()
            return self._peft, self._peft.disable_adapter()
        if adapter not in self._adapters:
            raise AdapterNotLoaded(adapter)
        assert self._peft is not None
        self._peft.set_adapter(adapter)
        return self._peft, contextlib.nullcontext()

    def _finish(
        self,
        new_ids: list[int],
        request: GenerationRequest,
        adapter: str | None,
        ms: float,
        prompt_len: int,
    ) -> Generation:
        eos = self.tokenizer.eos_token_id
        finish = "length"
        if eos is not None and eos in new_ids:
            new_ids = new_ids[: new_ids.index(eos) + 1]
            finish = "stop"
        text = self.tokenizer.decode(new_ids, skip_special_tokens=True)
        cut = [text.index(s) for s in request.stop if s in text]
        if cut:
            text = text[: min(cut)]
            finish = "stop"
        return Generation(
            text=text,
            prompt_tokens=prompt_len,
            completion_tokens=len(new_ids),
            finish_reason=finish,
            extra={"adapter": adapter, "generate_ms": round(ms, 2)},
        )
