"""vLLM inference backend (optional, GPU only): one engine, many LoRAs via ``LoRARequest``.

vLLM is imported lazily, so this module imports everywhere; constructing
:class:`VLLMBackend` without vllm installed or without a CUDA GPU raises a
``ConfigError`` that says so. Adapters are registered by name and passed to each
``generate`` call as a ``LoRARequest(name, int_id, path)``; vLLM keeps up to
``serve.vllm_max_loras`` of them resident on the GPU. Stacks (``add_weighted_adapter``)
are a PEFT feature and need the ``transformers`` backend.
"""

from __future__ import annotations

import importlib.util
import itertools
import logging
import threading
from typing import Any

from qlp_ray.core.errors import ConfigError
from qlp_ray.models.backend import AdapterNotLoaded, Generation, GenerationRequest, InferenceBackend
from qlp_ray.models.hf_backend import check_adapter_dir

logger = logging.getLogger(__name__)


def vllm_unavailable_reason() -> str | None:
    """Why the vLLM backend cannot run here (``None`` when it can)."""
    if importlib.util.find_spec("vllm") is None:
        return "vllm is not installed (the 'gpu' extra: pip install 'qlp_ray[gpu]' on CUDA)"
    import torch

    if not torch.cuda.is_available():
        return "vllm needs a CUDA GPU and none is available"
    return None


class VLLMBackend(InferenceBackend):
    """Multi-LoRA generation on one vLLM engine."""

    name = "vllm"

    def __init__(
        self,
        model_path: str,
        *,
        max_loras: int = 8,
        max_lora_rank: int = 16,
        gpu_memory_utilization: float = 0.85,
        max_model_len: int | None = None,
        engine_kwargs: dict[str, Any] | None = None,
    ) -> None:
        reason = vllm_unavailable_reason()
        if reason is not None:
            raise ConfigError(f"`serve.backend` is 'vllm' but {reason}")
        from vllm import LLM

        self._llm = LLM(
            model=model_path,
            enable_lora=True,
            max_loras=max_loras,
            max_lora_rank=max_lora_rank,
            gpu_memory_utilization=gpu_memory_utilization,
            max_model_len=max_model_len,
            **(engine_kwargs or {}),
        )
        self._lora_requests: dict[str, Any] = {}
        self._ids = itertools.count(1)  # vLLM needs a unique positive int per adapter load
        self._lock = threading.Lock()
        self.max_lora_rank = max_lora_rank

    @property
    def loaded_adapters(self) -> list[str]:
        return sorted(self._lora_requests)

    def load_adapter(self, name: str, path: str) -> None:
        """Register a verified adapter directory; vLLM reads it on first use."""
        from vllm.lora.request import LoRARequest

        adapter_dir = check_adapter_dir(path)
        with self._lock:
            self._lora_requests[name] = LoRARequest(name, next(self._ids), str(adapter_dir))

    def unload_adapter(self, name: str) -> None:
        with self._lock:
            request = self._lora_requests.pop(name, None)
        if request is not None:
            self._llm.llm_engine.remove_lora(request.lora_int_id)

    def generate(self, request: GenerationRequest, adapter: str | None = None) -> Generation:
        from vllm import SamplingParams

        lora = None
        if adapter is not None:
            lora = self._lora_requests.get(adapter)
            if lora is None:
                raise AdapterNotLoaded(adapter)
        params = SamplingParams(
            max_tokens=request.max_new_tokens,
            temperature=request.temperature,
            top_p=request.top_p,
            stop=list(request.stop) or None,
            seed=request.seed,
        )
        out = self._llm.generate([request.prompt], params, lora_request=lora, use_tqdm=False)[0]
        completion = out.outputs[0]
        return Generation(
            text=completion.text,
            prompt_tokens=len(out.prompt_token_ids),
            completion_tokens=len(completion.token_ids),
            finish_reason="stop" if completion.finish_reason == "stop" else "length",
            extra={"adapter": adapter, "backend": self.name},
        )


__all__ = ["VLLMBackend", "vllm_unavailable_reason"]
