"""OpenVINO inference backend: openvino-genai's ``LLMPipeline`` on a stateful IR (KV cache).

The base model is exported once per weight format (``models/openvino_export.py``: KV cache
as OpenVINO state, NNCF ``int8``/``int4`` weight compression, cached on disk by a digest
of the weights) and run by ``openvino_genai.LLMPipeline`` on ``serve.openvino_device``
(``CPU`` here; ``NPU``/``GPU`` where present). Its decoding loop is C++; on CPU the
inference precision is pinned to f32, and with fp32 weights the KV cache too, so the fp32
IR matches torch (int8/int4 keep the plugin's u8 KV cache).

Adapters (verified by the caller, as for every backend) run in one of two ways:

* ``runtime`` (default): plain LoRA adapters on linear layers are openvino-genai runtime
  adapters (``openvino_genai.Adapter``, scale ``lora_alpha / r``) on the *one* base
  pipeline: every loaded adapter is declared when the pipeline is built (loading or
  unloading one rebuilds it, no export), and each request picks its own.
* ``merged``: the adapter is merged into a copy of the base (``merge_and_unload``) and
  exported to its own IR and pipeline. Adapters runtime LoRA cannot take (DoRA,
  ``modules_to_save``, per-module ranks, non-linear targets) always go this way.

Generation feeds the tokenizer's ids (the same prompt tokens as the transformers
backend), greedy for ``temperature == 0`` else temperature / top-p (/ the model's top-k)
sampling with ``rng_seed``; stop strings are checked as tokens arrive (the text is cut
before the first). :meth:`OpenVINOBackend.astream` yields token ids as they are decoded.
"""

from __future__ import annotations

import asyncio
import copy
import json
import logging
import random
import shutil
import tempfile
import threading
import time
import weakref
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from qlp_ray.core.errors import AdapterLoadError, AdapterNotFound, InvalidRequest
from qlp_ray.models.backend import (
    AdapterNotLoaded,
    Generation,
    GenerationRequest,
    InferenceBackend,
)
from qlp_ray.models.openvino_export import (
    MODEL_XML,
    WEIGHT_FORMATS,
    WeightFormat,
    export_stateful,
    ir_dir,
)
from qlp_ray.models.stream_text import cut_at_stop

logger = logging.getLogger(__name__)

LoraMode = Literal["runtime", "merged"]


def export_to_openvino(model: Any, weight_format: WeightFormat = "fp32") -> Any:
    """A stateful (KV cache) ``openvino.Model`` of a torch causal LM."""
    return export_stateful(model, weight_format)


def merge_adapter(base_model: Any, adapter_path: str | Path) -> Any:
    """A copy of ``base_model`` with the PEFT adapter at ``adapter_path`` merged in."""
    from peft import PeftModel

    path = _check_adapter_files(adapter_path)
    try:
        peft_model = PeftModel.from_pretrained(copy.deepcopy(base_model), str(path))
        return peft_model.merge_and_unload().eval()
    except (ValueError, RuntimeError, KeyError) as exc:
        raise AdapterLoadError(f"adapter {path} does not fit the base model: {exc}") from exc


def _check_adapter_files(adapter_path: str | Path) -> Path:
    path = Path(adapter_path)
    if not (path / "adapter_config.json").is_file():
        raise AdapterLoadError(f"no adapter_config.json in {path}")
    if not (path / "adapter_model.safetensors").is_file():
        raise AdapterLoadError(f"no adapter_model.safetensors in {path} (pickle is never loaded)")
    return path


def runtime_lora_scale(base_model: Any, adapter_path: Path) -> float | None:
    """The scale openvino-genai applies to the adapter (PEFT's ``lora_alpha / r``, or
    ``/ sqrt(r)`` for rsLoRA), or None when runtime LoRA cannot run it exactly."""
    import torch

    cfg = json.loads((adapter_path / "adapter_config.json").read_text())
    if cfg.get("peft_type") != "LORA" or cfg.get("use_dora") or cfg.get("modules_to_save"):
        return None
    if cfg.get("rank_pattern") or cfg.get("alpha_pattern") or cfg.get("layers_to_transform"):
        return None
    if cfg.get("bias", "none") != "none" or cfg.get("fan_in_fan_out"):
        return None
    targets = cfg.get("target_modules")
    if isinstance(targets, str) or not targets:  # a regex: cannot check every match here
        return None
    matched = [
        module
        for name, module in base_model.named_modules()
        if name.split(".")[-1] in targets and ".layers." in f".{name}."
    ]
    if not matched or not all(isinstance(m, torch.nn.Linear) for m in matched):
        return None
    r, alpha = int(cfg["r"]), float(cfg.get("lora_alpha", cfg["r"]))
    return alpha / (r**0.5) if cfg.get("use_rslora") else alpha / r


@dataclass
class _Merged:
    pipeline: Any
    ir: Path
    lock: threading.Lock


class OpenVINOBackend(InferenceBackend):
    """One base model and its adapters on openvino-genai ``LLMPipeline``s (KV cache)."""

    name = "openvino"

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        *,
        device: str = "CPU",
        weight_format: WeightFormat = "fp32",
        max_positions: int | None = None,
        lora_mode: LoraMode = "runtime",
        cache_dir: str | Path | None = None,
    ) -> None:
        import openvino as ov

        if weight_format not in WEIGHT_FORMATS:
            raise InvalidRequest(
                f"weight_format must be one of {WEIGHT_FORMATS}, got {weight_format!r}"
            )
        if lora_mode not in ("runtime", "merged"):
            raise InvalidRequest(f"lora_mode must be 'runtime' or 'merged', got {lora_mode!r}")
        self._core = ov.Core()
        have = self._core.available_devices
        if device not in have and device.split(".")[0] not in (d.split(".")[0] for d in have):
            raise InvalidRequest(f"OpenVINO device {device!r} is not present (have {have})")
        self.device = device
        self.weight_format = weight_format
        self.lora_mode = lora_mode
        self.tokenizer = tokenizer
        self._base = model.eval()
        self.max_positions = max_positions or int(
            getattr(model.config, "max_position_embeddings", 2048)
        )
        top_k = getattr(getattr(model, "generation_config", None), "top_k", None)
        self._top_k = int(top_k) if top_k else None  # as transformers' generate samples
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        if cache_dir is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="qlp-ov-")
            cache_dir = self._tmp.name
        self.cache_dir = Path(cache_dir)
        self._kept_root = tempfile.mkdtemp(prefix="qlp-ov-adapters-")
        weakref.finalize(self, shutil.rmtree, self._kept_root, True)
        self._lock = threading.Lock()  # the base pipeline: one generation at a time
        self._loading = threading.RLock()  # loads and unloads, one at a time
        self.base_ir = ir_dir(model, tokenizer, weight_format, self.cache_dir)
        # name -> (openvino_genai.Adapter, scale, a private copy of the verified files)
        self._runtime: dict[str, tuple[Any, float, Path]] = {}
        self._merged: dict[str, _Merged] = {}
        self._pipeline = self._build_pipeline(self.base_ir, self._runtime)
        self._scorers: dict[str | None, Any] = {}  # compiled stateful models for logits

    @classmethod
    def from_pretrained(cls, path: str | Path, **kwargs: Any) -> OpenVINOBackend:
        """Load a Hugging Face model directory (safetensors) and its tokenizer."""
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(str(path))
        model = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32)
        return cls(model, tokenizer, **kwargs)

    def _device_config(self) -> dict[str, Any]:
        if self.device != "CPU":
            return {}
        # f32 compute; fp32 weights also keep an f32 KV cache (the CPU plugin's default is
        # u8, which moves logits by ~1e-3)
        config: dict[str, Any] = {"INFERENCE_PRECISION_HINT": "f32"}
        if self.weight_format == "fp32":
            config["KV_CACHE_PRECISION"] = "f32"
        return config

    def _build_pipeline(self, ir: Path, runtime: dict[str, tuple[Any, float, Path]]) -> Any:
        import openvino_genai as og

        kwargs = dict(self._device_config())
        if runtime:
            adapters = og.AdapterConfig()
            for adapter, scale, _ in runtime.values():
                adapters.add(adapter, scale)
            kwargs["adapters"] = adapters
        t0 = time.perf_counter()
        pipeline = og.LLMPipeline(str(ir), self.device, **kwargs)
        logger.info(
            "built an OpenVINO GenAI pipeline (%s, %s, %d runtime adapters) in %.2f s",
            self.device, self.weight_format, len(runtime), time.perf_counter() - t0,
        )  # fmt: skip
        return pipeline

    # ----------------------------------------------------------------- adapters
    def load_adapter(self, name: str, path: str) -> None:
        """Load a verified adapter directory: a runtime adapter on the base pipeline when
        it can be (``lora_mode='runtime'``), else a merged export of its own."""

        with self._loading:
            self._load(name, _check_adapter_files(path))

    def _load(self, name: str, adapter_dir: Path) -> None:
        import openvino_genai as og

        scale = runtime_lora_scale(self._base, adapter_dir) if self.lora_mode == "runtime" else None
        if scale is not None:
            try:
                adapter = og.Adapter(str(adapter_dir / "adapter_model.safetensors"))
            except Exception as exc:
                raise AdapterLoadError(f"adapter {adapter_dir} is not readable: {exc}") from exc
            # the files as verified now, for a merged export if this adapter is scored later
            kept = Path(tempfile.mkdtemp(prefix="adapter-", dir=self._kept_root))
            for file in ("adapter_config.json", "adapter_model.safetensors"):
                shutil.copyfile(adapter_dir / file, kept / file)
            runtime = {**self._runtime, name: (adapter, scale, kept)}
            pipeline = self._build_pipeline(self.base_ir, runtime)
            with self._lock:
                # pipeline first: a reader that finds the adapter finds a pipeline with it
                self._pipeline = pipeline
                self._runtime = runtime
            self._merged.pop(name, None)
            mode = "runtime"
        else:
            merged = merge_adapter(self._base, adapter_dir)
            ir = ir_dir(merged, self.tokenizer, self.weight_format, self.cache_dir)
            pipeline = self._build_pipeline(ir, {})
            if name in self._runtime:  # a reload of the same name, now merged
                self.unload_adapter(name)
            self._merged[name] = _Merged(pipeline, ir, threading.Lock())
            mode = "merged"
        self._scorers.pop(name, None)
        logger.info(
            "loaded adapter %s into OpenVINO (%s, %s, %s)",
            name, mode, self.device, self.weight_format,
        )  # fmt: skip

    def unload_adapter(self, name: str) -> None:
        if name is None:
            return
        with self._loading:
            self._merged.pop(name, None)
            self._scorers.pop(name, None)
            if name not in self._runtime:
                return
            shutil.rmtree(self._runtime[name][2], ignore_errors=True)
            runtime = {k: v for k, v in self._runtime.items() if k != name}
            pipeline = self._build_pipeline(self.base_ir, runtime)
            with self._lock:
                self._runtime = runtime  # table first: the adapter is gone before its slot
                self._pipeline = pipeline

    @property
    def loaded_adapters(self) -> list[str]:
        return [*self._runtime, *self._merged]

    def adapter_mode(self, name: str) -> str:
        """``runtime`` or ``merged`` for a loaded adapter."""
        if name in self._runtime:
            return "runtime"
        if name in self._merged:
            return "merged"
        raise AdapterNotFound(f"adapter {name!r} is not loaded in the OpenVINO backend")

    # --------------------------------------------------------------- inference
    def _route(self, adapter: str | None) -> tuple[Any, threading.Lock, Any]:
        """(pipeline, its lock, the AdapterConfig for the request) of ``adapter``."""
        import openvino_genai as og

        if adapter is None:
            return self._pipeline, self._lock, og.AdapterConfig()
        if adapter in self._merged:
            merged = self._merged[adapter]
            return merged.pipeline, merged.lock, None
        entry = self._runtime.get(adapter)  # read before the pipeline (see load_adapter)
        if entry is not None:
            return self._pipeline, self._lock, og.AdapterConfig(entry[0], entry[1])
        raise AdapterNotLoaded(adapter)  # as the other backends: the compositor reloads it

    def _generation_config(self, request: GenerationRequest, adapters: Any) -> Any:
        import openvino_genai as og

        cfg = og.GenerationConfig()
        cfg.max_new_tokens = request.max_new_tokens
        if self.tokenizer.eos_token_id is not None:
            cfg.eos_token_id = int(self.tokenizer.eos_token_id)
        if request.temperature > 0:
            cfg.do_sample = True
            cfg.temperature = float(request.temperature)
            cfg.top_p = float(request.top_p)
            if self._top_k:
                cfg.top_k = self._top_k
            cfg.rng_seed = request.seed if request.seed is not None else random.getrandbits(31)
        else:
            cfg.do_sample = False
        if adapters is not None:
            cfg.adapters = adapters
        return cfg

    def _decode_ids(
        self,
        prompt_ids: list[int],
        request: GenerationRequest,
        adapter: str | None,
        on_token: Callable[[int], bool] | None = None,
    ) -> list[int]:
        """New token ids (EOS included when it ended the row); ``on_token`` sees each as it
        comes and returns True to stop there. Stop strings end the row too."""
        import openvino as ov
        import openvino_genai as og

        if not prompt_ids:
            raise InvalidRequest("the prompt has no tokens")
        if prompt_ids and len(prompt_ids) + request.max_new_tokens > self.max_positions:
            raise InvalidRequest(
                f"prompt ({len(prompt_ids)} tokens) + max_tokens ({request.max_new_tokens}) "
                f"exceeds the model's context length of {self.max_positions} tokens",
                param="prompt",
            )
        pipeline, lock, adapters = self._route(adapter)
        cfg = self._generation_config(request, adapters)
        new: list[int] = []
        stopped_at: list[int] = []  # set when a stop string (or the caller) ended the row
        decode, stops = self.tokenizer.decode, request.stop

        def push(token: int) -> bool:
            if stopped_at:  # genai's streaming thread may run a token past our STOP
                return True
            new.append(token)
            stop = on_token(token) if on_token is not None else False
            if stops and any(s and s in decode(new, skip_special_tokens=True) for s in stops):
                stop = True
            if stop:
                stopped_at.append(len(new))
            return stop

        ids = np.asarray([prompt_ids], dtype=np.int64)
        inputs = og.TokenizedInputs(ov.Tensor(ids), ov.Tensor(np.ones_like(ids)))
        with lock:
            result = pipeline.generate(inputs, cfg, _token_streamer(push))
        if stopped_at:  # the row ends at the token that completed the stop string
            return new[: stopped_at[0]]
        tokens = [int(t) for t in result.tokens[0]]
        if len(tokens) > len(new):  # a token the streamer was not handed (e.g. the EOS)
            new += tokens[len(new) :]
        return new

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
        """Generated token ids (without the prompt); stops at EOS (included)."""
        request = GenerationRequest(
            prompt="", max_new_tokens=max_new_tokens, temperature=temperature,
            top_p=top_p, seed=seed,
        )  # fmt: skip
        return self._decode_ids(list(prompt_ids), request, adapter)

    def _prompt_ids(self, request: GenerationRequest) -> list[int]:
        return list(self.tokenizer(request.prompt, add_special_tokens=True)["input_ids"])

    def _finish(
        self, new: list[int], request: GenerationRequest, prompt_len: int, ms: float
    ) -> Generation:
        eos = self.tokenizer.eos_token_id
        finish = "length"
        if eos is not None and eos in new:
            new, finish = new[: new.index(eos) + 1], "stop"
        text, stopped = cut_at_stop(
            self.tokenizer.decode(new, skip_special_tokens=True), request.stop
        )
        return Generation(
            text=text,
            prompt_tokens=prompt_len,
            completion_tokens=len(new),
            finish_reason="stop" if stopped else finish,
            extra={
                "backend": self.name,
                "device": self.device,
                "weights": self.weight_format,
                "generate_ms": round(ms, 2),
            },
        )

    def generate(self, request: GenerationRequest, adapter: str | None = None) -> Generation:
        prompt_ids = self._prompt_ids(request)
        t0 = time.perf_counter()
        new = self._decode_ids(prompt_ids, request, adapter)
        return self._finish(new, request, len(prompt_ids), (time.perf_counter() - t0) * 1000)

    async def astream(
        self, request: GenerationRequest, adapter: str | None = None
    ) -> AsyncIterator[int | Generation]:
        """Token ids as the pipeline decodes them, then the ``Generation`` (the same one
        :meth:`generate` returns). Closing the iterator early stops the generation at its
        next token."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[Any] = asyncio.Queue()
        cancelled = threading.Event()
        prompt_ids = self._prompt_ids(request)

        def on_token(token: int) -> bool:
            loop.call_soon_threadsafe(queue.put_nowait, token)
            return cancelled.is_set()

        def run() -> None:
            t0 = time.perf_counter()
            try:
                new = self._decode_ids(prompt_ids, request, adapter, on_token)
                ms = (time.perf_counter() - t0) * 1000
                result: Any = self._finish(new, request, len(prompt_ids), ms)
            except Exception as exc:  # raised to the stream's reader
                result = exc
            loop.call_soon_threadsafe(queue.put_nowait, result)

        worker = loop.run_in_executor(None, run)
        try:
            while True:
                item = await queue.get()
                if isinstance(item, Exception):
                    raise item
                yield item
                if isinstance(item, Generation):
                    return
        finally:
            cancelled.set()
            await asyncio.shield(worker)

    # ----------------------------------------------------------------- scoring
    def _scorer(self, adapter: str | None) -> Any:
        """A compiled stateful model (logits of whole sequences) for ``adapter``."""
        if adapter in self._scorers:
            return self._scorers[adapter]
        if adapter is None:
            ir = self.base_ir
        elif adapter in self._merged:
            ir = self._merged[adapter].ir
        elif adapter in self._runtime:  # scored on a merged export of the same adapter
            merged = merge_adapter(self._base, self._runtime[adapter][2])
            ir = ir_dir(merged, self.tokenizer, self.weight_format, self.cache_dir)
        else:
            raise AdapterNotFound(f"adapter {adapter!r} is not loaded in the OpenVINO backend")
        compiled = self._core.compile_model(str(ir / MODEL_XML), self.device, self._device_config())
        self._scorers[adapter] = compiled
        return compiled

    def logits(self, input_ids: np.ndarray, adapter: str | None = None) -> np.ndarray:
        """Logits ``(batch, seq, vocab)`` for int token ids ``(batch, seq)`` (an empty cache)."""
        ids = np.asarray(input_ids, dtype=np.int64)
        if ids.ndim != 2 or ids.shape[1] == 0:
            raise InvalidRequest(
                f"input_ids must be a non-empty (batch, seq) array, got {ids.shape}"
            )
        request = self._scorer(adapter).create_infer_request()
        request.infer(
            {
                "input_ids": ids,
                "attention_mask": np.ones_like(ids),
                "position_ids": np.broadcast_to(np.arange(ids.shape[1]), ids.shape).copy(),
                "beam_idx": np.arange(ids.shape[0], dtype=np.int32),
            }
        )
        return request.get_tensor("logits").data.copy()

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


def _token_streamer(push: Callable[[int], bool]) -> Any:
    """An ``openvino_genai.StreamerBase`` handing each token id to ``push`` (True = stop)."""
    import openvino_genai as og

    class _Tokens(og.StreamerBase):
        def write(self, token: Any) -> Any:
            tokens = token if isinstance(token, list) else [token]
            stop = False
            for t in tokens:
                stop = push(int(t)) or stop
            return og.StreamingStatus.STOP if stop else og.StreamingStatus.RUNNING

        def end(self) -> None:
            return None

    return _Tokens()


__all__ = [
    "OpenVINOBackend",
    "WEIGHT_FORMATS",
    "export_to_openvino",
    "merge_adapter",
    "runtime_lora_scale",
]
