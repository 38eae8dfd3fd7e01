"""Compositor deployment: one shared base model, signed adapters multiplexed on it (LRU).

Serve's ``@serve.multiplexed`` keeps at most ``serve.max_adapters_per_replica`` adapters
per replica. Its loader verifies the adapter through the registry (signature, files,
base model) before a single weight is read, then loads it into the shared
:class:`TransformersBackend`. On LRU eviction Serve calls the cached object's
``__del__``; :class:`AdapterLease` then frees the PEFT adapter — after the requests still
using it have finished. The multiplexed model id is ``"<adapter_id>@<version>"``.

A model id with ``+`` or ``:`` is an adapter *stack* (see ``models/composition.py``):
it bypasses the multiplex LRU and is composed by ``StackComposer`` into its own LRU +
TTL composition cache. ``prefetch`` queues loads in the background; ``warm`` and
``invalidate`` serve the hot-swap admin route. With one replica the admin routes call them
through the handle; with ``serve.compositor_replicas > 1`` every replica takes them from
the swap board (``serve/swap_board.py``). The backend comes from ``serve.backend``.
With ``serve.backend: vllm`` (``models/vllm_backend.py``) requests are awaited on vLLM's
async engine, which batches and streams them itself; adapters reach it as private copies
verified after copying, stacks as one LoRA of concatenated ranks (always ``cat``).

``revalidate`` evicts every loaded adapter (and cached stack holding one) that a request may
no longer be served (``Registry.servable``: retired, or signed by a revoked key): its lease
is released, so the backend frees it once the rows using it are done, and Serve's router
learns the replica no longer holds it. It runs on the swap board's ``revalidate`` notice
(``POST /v1/admin/keys/{key_id}/revoke``) and whenever the registry's generation marker
moves (``qlp keys revoke`` / ``qlp registry retire`` from any process), without a restart;
the next load of such a version is refused by the registry (403 ``adapter_revoked``).

Concurrent requests are generated together (up to ``serve.max_batch_size``) whatever their
adapters. With ``serve.continuous_batching`` (default) a request joins the running
batch at the next decoding step and leaves it when done
(:class:`~qlp_ray.serve.batching.StepMerger`); otherwise requests that arrive while the
backend generates form its next batch (:class:`~qlp_ray.serve.batching.BatchMerger`).
Each row holds its adapter's lease until it is done, and a row's error fails only that
request.

``generate_stream`` (a generator method, called through ``handle.options(stream=True)``)
yields a row's text as the continuous decoder produces it (:meth:`StepMerger.stream`,
detokenised by :class:`~qlp_ray.models.stream_text.TextDeltas`), or as openvino-genai's
loop produces it with ``serve.backend: openvino`` (:meth:`OpenVINOBackend.astream`); other
rows come whole, as one event. When the caller goes away Serve cancels the generator, and the
row leaves the decoder before its next step (openvino: the generation stops at its next
token). Chat requests carry their ``messages``: a tokenizer with a chat template renders
them (:func:`~qlp_ray.models.prompt.chat_template_prompt`).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

from ray import serve

from qlp_ray.core.config import QLPConfig, resolve_config
from qlp_ray.core.errors import ConfigError, InvalidRequest, Overloaded, QLPError
from qlp_ray.models.backend import AdapterNotLoaded, Generation, GenerationRequest, InferenceBackend
from qlp_ray.models.base import base_model_id, load_base, resolve_base_path
from qlp_ray.models.composition import AdapterStack, is_stack, parse_multiplex_id, parse_stack
from qlp_ray.models.hf_backend import TransformersBackend
from qlp_ray.models.openvino_backend import OpenVINOBackend
from qlp_ray.models.precision import DeviceFacts, resolve_dtype, torch_dtype
from qlp_ray.models.prompt import chat_template_prompt
from qlp_ray.models.stream_text import TextDeltas
from qlp_ray.models.vllm_backend import VLLMBackend, vllm_unavailable_reason
from qlp_ray.registry.generation import GenerationWatch
from qlp_ray.registry.private_copy import verified_copy
from qlp_ray.registry.store import Registry
from qlp_ray.serve.admission import deployment_limits, replica_options
from qlp_ray.serve.batching import BatchMerger, StepMerger
from qlp_ray.serve.composition import AdapterLease, PrefetchQueue, StackComposer
from qlp_ray.serve.swap_board import Ack, SwapBoard
from qlp_ray.serve.swap_board_actor import RaySwapBoard, make_swap_board

logger = logging.getLogger(__name__)

_LOAD_ATTEMPTS = 3


class Compositor:
    """Serve deployment: generates with the base model or a multiplexed, verified adapter."""

    def __init__(self, config: dict[str, Any]) -> None:

        self.cfg = resolve_config(config)  # secrets from this node (core/config/secrets.py)
        t0 = time.perf_counter()
        self.backend = create_backend(self.cfg)
        self.base_model = base_model_id(self.cfg)
        self.registry = Registry(self.cfg)
        self.loads = 0
        self.evicted: dict[str, str] = {}  # model id -> why revalidate() evicted it
        # wired at init so the LRU size comes from the config (Serve detects this at runtime)
        self._loader = self._make_loader()
        self.get_adapter = serve.multiplexed(
            max_num_models_per_replica=self.cfg.serve.max_adapters_per_replica
        )(self._loader)
        self.stacks = self._make_stack_composer()
        self.prefetcher = PrefetchQueue(self._prefetch_one)
        # concurrent requests join one backend batch whatever their adapters (serve/batching.py)
        self.batching = self.cfg.serve.max_batch_size > 1 and self.backend.batches_across_adapters
        self.most_adapters = 0  # most distinct adapters in one backend batch
        self._merger: BatchMerger | StepMerger
        if self.cfg.serve.continuous_batching and hasattr(self.backend, "continuous_decoder"):
            self._merger = StepMerger(self.backend, self.cfg.serve.max_batch_size)
        else:
            self._merger = BatchMerger(self._generate_rows, self.cfg.serve.max_batch_size)
        self.prewarm_errors = self._prewarm()
        self._board: SwapBoard | RaySwapBoard | None = None
        self._board_done: set[str] = set()  # notices this replica has answered
        self._board_task: asyncio.Task | None = None  # held: the loop keeps weak refs
        if self.cfg.serve.compositor_replicas > 1:  # a swap must reach every replica
            self._follow_swap_board()
        self._registry_task: asyncio.Task | None = None
        self._follow_registry()
        logger.info("compositor ready (%s) in %.1f s", self.base_model, time.perf_counter() - t0)

    # -- stacks, prefetch, swap -----------------------------------------------------
    def _make_stack_composer(self) -> StackComposer | None:

        # PEFT add_weighted_adapter compositions, or one vLLM LoRA of concatenated ranks
        cat = isinstance(self.backend, VLLMBackend)
        if not (cat or isinstance(self.backend, TransformersBackend)):
            return None
        s = self.cfg.serve
        return StackComposer(
            self.backend,
            self._adapter_files,
            combination="cat" if cat else s.composition_type,
            fallback=None if cat else s.composition_fallback,
            density=s.composition_density,
            cache_size=s.composition_cache_size,
            ttl_s=s.composition_cache_ttl_s,
        )

    def _adapter_files(self, adapter_id: str, version: int | None) -> Path:
        """The verified directory to load an adapter version from. vLLM reads files lazily:
        it gets a private copy, verified after copying (``registry/private_copy.py``)."""
        if isinstance(self.backend, VLLMBackend):
            return verified_copy(self.registry, adapter_id, version, self.backend.scratch_dir(),
                                 expected_base_model=self.base_model)  # fmt: skip
        return self.registry.verified_path(adapter_id, version, expected_base_model=self.base_model)

    def _stack(self, model_id: str) -> AdapterStack:
        """The parsed stack with every member pinned (to the current version if unnamed)."""
        if self.stacks is None:
            raise InvalidRequest(
                f"adapter stacks need the transformers backend (serve.backend is "
                f"{self.cfg.serve.backend!r})",
                param="model",
            )
        stack = parse_stack(model_id, max_members=self.cfg.serve.max_stack_size)
        if stack.resolved:
            return stack
        versions = {
            m.adapter_id: int(self.registry.get(m.adapter_id).version)
            for m in stack.members
            if m.version is None
        }
        return stack.with_versions(versions)

    def _prewarm(self) -> dict[str, str]:
        """Compose the configured pre-warm stacks; failures are logged and reported."""
        errors = {}
        for model_id in self.cfg.serve.prewarm_stacks:
            try:
                self.stacks_required().get(self._stack(model_id))
            except QLPError as exc:
                logger.error("pre-warm of stack %s failed: %s", model_id, exc.message)
                errors[model_id] = exc.message
        return errors

    def stacks_required(self) -> StackComposer:
        if self.stacks is None:
            raise InvalidRequest("adapter stacks need the transformers backend")
        return self.stacks

    async def _prefetch_one(self, model_id: str) -> None:
        if is_stack(model_id):
            stack = await asyncio.to_thread(self._stack, model_id)
            await asyncio.to_thread(self.stacks_required().get, stack)
        else:
            await self.get_adapter(model_id)

    async def prefetch(self, model_ids: list[str], priority: int = 0) -> dict[str, Any]:
        """Queue adapters/stacks to load in the background; returns at once."""
        pending = self.prefetcher.submit(list(model_ids), priority)
        return {"queued": list(model_ids), "priority": priority, "pending": pending}

    async def prefetch_join(self, timeout_s: float = 60.0) -> dict[str, Any]:
        await self.prefetcher.join(timeout_s)
        return self.prefetcher.stats()

    async def warm(self, old_id: str, new_id: str) -> list[str]:
        """Load ``new_id`` (``adapter@version``) and pre-compose every cached stack that
        holds ``old_id`` with ``new_id`` in its place; returns what was warmed."""
        await self.get_adapter(new_id)
        warmed = [new_id]
        if self.stacks is None:
            return warmed
        adapter_id, old_version = parse_multiplex_id(old_id)
        _, new_version = parse_multiplex_id(new_id)
        if old_version is None or new_version is None:
            raise InvalidRequest("warm needs versioned ids ('adapter@version')")
        for stack in self.stacks.cached_stacks():
            if stack.contains(adapter_id, old_version):
                fresh = stack.replace_version(adapter_id, old_version, new_version)
                await asyncio.to_thread(self.stacks.get, fresh)
                warmed.append(fresh.key)
        return warmed

    # -- revocation / retirement: evict what may no longer be served ---------------
    def _multiplex(self) -> Any:
        """Serve's multiplex cache of this replica (None before the first load). Ray 2.60
        keeps it on the loader function as ``__serve_multiplex_wrapper``, its ``models`` an
        OrderedDict model id -> lease (tests/serve/test_serve_http.py fails if it moves)."""
        return getattr(self._loader, "__serve_multiplex_wrapper", None)

    def loaded_models(self) -> list[str]:
        """Model ids (``adapter@version``) in this replica's multiplex cache."""
        cache = self._multiplex()
        return list(cache.models) if cache is not None else []

    def _evict(self, model_id: str) -> bool:
        cache = self._multiplex()
        lease = cache.models.pop(model_id, None) if cache is not None else None
        if lease is None:
            return False
        lease.release()  # freed now if idle, else when its last row is done
        cache._push_multiplexed_replica_info = True  # Serve's router: no longer held here
        return True

    async def revalidate(self) -> list[str]:
        """Evict loaded adapters and cached stacks whose versions a request may no longer be
        served; returns the evicted model ids and stack keys."""
        refused: dict[tuple[str, int | None], str | None] = {}

        def why(adapter_id: str, version: int | None) -> str | None:
            if (adapter_id, version) not in refused:
                try:
                    self.registry.servable(adapter_id, version)
                    refused[(adapter_id, version)] = None
                except QLPError as exc:
                    refused[(adapter_id, version)] = exc.message
            return refused[(adapter_id, version)]

        evicted: list[str] = []
        for model_id in self.loaded_models():
            reason = await asyncio.to_thread(why, *parse_multiplex_id(model_id))
            if reason and self._evict(model_id):
                self.evicted[model_id] = reason
                evicted.append(model_id)
                logger.warning("evicted %s: %s", model_id, reason)
        for stack in self.stacks.cached_stacks() if self.stacks is not None else []:
            for m in stack.members:
                reason = await asyncio.to_thread(why, m.adapter_id, m.version)
                if reason:
                    for key in self.stacks.invalidate(m.adapter_id, m.version):
                        self.evicted[key] = reason
                        evicted.append(key)
        return evicted

    def _follow_registry(self) -> None:
        """Revalidate whenever the registry's generation marker moves (polled)."""
        self._generation = GenerationWatch(
            self.registry.generation, max(self.cfg.router.generation_poll_s, 1.0)
        )
        self._generation.commit(self._generation.snapshot())
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # built outside Serve: revalidate() is called by hand
            return
        self._registry_task = loop.create_task(self._follow_registry_forever())

    async def _follow_registry_forever(self) -> None:
        watch = self._generation
        while True:
            await asyncio.sleep(watch.poll_s)
            try:
                if await watch.changed_async():
                    marker = await asyncio.to_thread(watch.snapshot)
                    await self.revalidate()
                    watch.commit(marker)
            except Exception:  # an unreadable registry must not stop the replica
                logger.exception("registry revalidation failed; retrying")

    def _follow_swap_board(self) -> None:
        """Answer the swap board's notices from now on (polled every ``swap_poll_s``)."""

        self._board = make_swap_board(self.cfg)
        try:  # a replica's constructor runs on its event loop
            loop = asyncio.get_running_loop()
        except RuntimeError:  # built outside Serve: answer_swap_board() is called by hand
            return
        self._board_task = loop.create_task(self._follow_board_forever())

    async def _follow_board_forever(self) -> None:
        while True:
            try:
                await self.answer_swap_board()
            except Exception:  # a bad board must not stop the replica from following it
                logger.exception("swap board unreadable; retrying")
            await asyncio.sleep(self.cfg.serve.swap_poll_s)

    async def answer_swap_board(self) -> int:
        """Do the work of every notice this replica has not answered yet, acknowledge
        each; returns how many were answered."""

        board = self._board
        if board is None:
            return 0
        notices = await asyncio.to_thread(board.notices)
        self._board_done &= {n.id for n in notices}  # removed notices are forgotten
        answered = 0
        for notice in notices:
            if notice.id in self._board_done:
                continue
            self._board_done.add(notice.id)
            args = notice.args
            try:
                if notice.kind == "warm":
                    result = await self.warm(str(args["old_id"]), str(args["new_id"]))
                elif notice.kind == "prefetch":
                    queued = await self.prefetch(list(args["model_ids"]), int(args["priority"]))
                    result = queued["queued"]
                elif notice.kind == "revalidate":
                    result = await self.revalidate()
                else:
                    result = await self.invalidate(
                        str(args["adapter_id"]), args.get("version"), args.get("current")
                    )
                ack = Ack(_replica_name(), list(result))
            except QLPError as exc:
                ack = Ack(_replica_name(), error=exc.message, error_type=type(exc).__name__)
            except Exception as exc:  # reported to the swap route, which refuses the swap
                logger.exception("swap notice %s failed", notice.id)
                ack = Ack(_replica_name(), error=str(exc), error_type="AdapterLoadError")
            await asyncio.to_thread(board.ack, notice.id, ack)
            answered += 1
        return answered

    async def invalidate(
        self, adapter_id: str, version: int | None = None, current: int | None = None
    ) -> list[str]:
        """Drop cached stacks holding ``adapter_id`` (at ``version``; a swap to ``current``
        also keeps them from being cached again); returns their keys. A swap also evicts
        the old version itself from the multiplex cache: the backend frees it (vLLM's
        ``remove_lora``) once the requests still on it are done; a request pinned to it
        later loads it again. Async: the eviction runs on the loop that owns Serve's cache."""
        stacks = self.stacks
        dropped = (
            []
            if stacks is None
            else await asyncio.to_thread(stacks.invalidate, adapter_id, version, current)
        )
        old_id = f"{adapter_id}@{version}"
        if version is not None and current is not None and self._evict(old_id):
            dropped.append(old_id)
        return dropped

    def cache_stats(self) -> dict[str, Any]:
        """Composition-cache counters, prefetch queue and loaded adapters."""
        return {
            "backend": self.backend.name,
            "stacks": self.stacks.stats() if self.stacks is not None else None,
            "prefetch": self.prefetcher.stats(),
            "prewarm_errors": dict(self.prewarm_errors),
            "adapters_loaded": self.loads,
            "max_adapters_per_replica": self.cfg.serve.max_adapters_per_replica,
            "max_batch_size": self.cfg.serve.max_batch_size if self.batching else 1,
            "batching": {
                **self._merger.stats,
                "continuous": isinstance(self._merger, StepMerger),
                "most_adapters": max(self.most_adapters, getattr(self._merger, "most_adapters", 0)),
            },
        }

    def _make_loader(self) -> Any:
        async def load_adapter(model_id: str) -> AdapterLease:
            adapter_id, version = parse_multiplex_id(model_id)
            t0 = time.perf_counter()
            path = await asyncio.to_thread(self._adapter_files, adapter_id, version)
            lease = AdapterLease(self.backend, model_id)
            await asyncio.to_thread(self.backend.load_adapter, lease.name, str(path))
            self.loads += 1
            logger.info(
                "verified and loaded %s in %.1f ms", model_id, (time.perf_counter() - t0) * 1000
            )
            return lease

        return load_adapter

    def _request(self, payload: dict[str, Any]) -> GenerationRequest:
        """The backend request of a gateway payload; chat ``messages`` are rendered with the
        tokenizer's chat template when it has one (else the gateway's prompt stands)."""
        payload = dict(payload)
        messages = payload.pop("messages", None)
        if messages:
            templated = chat_template_prompt(getattr(self.backend, "tokenizer", None), messages)
            if templated is not None:
                payload["prompt"] = templated
        return GenerationRequest(**payload)

    def _lease_getter(self) -> tuple[Callable[[], Awaitable[AdapterLease]] | None, str]:
        """How to lease this call's multiplexed model (None: the base model) and its key."""
        model_id = serve.get_multiplexed_model_id()
        if not model_id:
            return None, ""
        if is_stack(model_id):
            composer = self.stacks_required()

            async def stack_lease() -> AdapterLease:
                stack = await asyncio.to_thread(self._stack, model_id)
                return await asyncio.to_thread(composer.get, stack)

            return stack_lease, model_id
        return (lambda: self.get_adapter(model_id)), model_id

    async def generate(self, request: dict[str, Any]) -> dict[str, Any]:
        """Generate for the request's multiplexed adapter ('' = base model, no adapter)."""
        gen_request = self._request(request)
        model_id = serve.get_multiplexed_model_id()
        if not model_id:
            return dataclasses.asdict(await self._run(gen_request, None))
        if is_stack(model_id):
            stack = await asyncio.to_thread(self._stack, model_id)
            composer = self.stacks_required()
            gen = await self._run_leased(
                lambda: asyncio.to_thread(composer.get, stack), gen_request, stack.key
            )
            gen.extra["stack"] = stack.key
            return dataclasses.asdict(gen)
        return dataclasses.asdict(
            await self._run_leased(lambda: self.get_adapter(model_id), gen_request, model_id)
        )

    async def generate_stream(self, request: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        """Stream one generation (called with ``handle.options(stream=True)``): ``{"text":
        delta}`` events as tokens are decoded, then a final event with the rest of the text,
        ``finish_reason`` and the token counts. Rows of the continuous decoder stream token
        by token; any other row (not plain LoRA, request-level batching, a backend without a
        decoder) comes as the final event alone. Closing the stream early (the client went
        away) cancels the row in the decoder."""
        gen_request = self._request(request)
        get_lease, model_id = self._lease_getter()
        if get_lease is None:
            async for event in self._stream_run(gen_request, None):
                yield event
            return
        for _ in range(_LOAD_ATTEMPTS):
            lease = await get_lease()
            sent = False
            try:
                with lease.use() as name:
                    async for event in self._stream_run(gen_request, name):
                        sent = True
                        yield event
                return
            except AdapterNotLoaded:  # evicted between lookup and use: load it again
                if sent:
                    raise
                logger.info("adapter %s evicted before use; reloading", model_id)
        raise Overloaded(f"adapter {model_id!r} keeps being evicted; retry later")

    async def _stream_run(
        self, request: GenerationRequest, adapter: str | None
    ) -> AsyncIterator[dict[str, Any]]:
        if isinstance(self.backend, VLLMBackend):  # vLLM's own deltas; closing aborts
            async for item in self.backend.astream(request, adapter):
                done = isinstance(item, Generation)
                yield final_event(item, "") if done else {"text": item}
            return
        if isinstance(self.backend, OpenVINOBackend):  # genai's own token loop; closing stops it
            tokens: AsyncIterator[Any] = self.backend.astream(request, adapter)
        elif self.batching and isinstance(self._merger, StepMerger):
            tokens = self._merger.stream(request, adapter)
        else:
            yield final_event(await self._run(request, adapter), "")
            return
        deltas = TextDeltas(
            lambda ids: self.backend.tokenizer.decode(ids, skip_special_tokens=True), request.stop
        )
        first = True
        async for item in tokens:
            if isinstance(item, Generation):
                yield final_event(item, deltas.finish(item.text))
                return
            delta = deltas.push(item)
            if delta or first:  # the first event tells the gateway the row is running
                first = False
                yield {"text": delta}

    def streaming_stats(self) -> dict[str, Any]:
        """Rows running in the continuous decoder and rows dropped for a gone caller."""
        if not isinstance(self._merger, StepMerger):
            return {"running": 0, "cancelled": 0, "continuous": False}
        return {
            "running": self._merger.running,
            "cancelled": int(self._merger.stats["cancelled"]),
            "continuous": True,
        }

    async def _run_leased(
        self,
        get_lease: Callable[[], Awaitable[AdapterLease]],
        request: GenerationRequest,
        model_id: str,
    ) -> Generation:
        """Generate under a lease, held until the row is done (no eviction mid-batch)."""
        for _ in range(_LOAD_ATTEMPTS):
            lease = await get_lease()
            try:
                with lease.use() as name:
                    return await self._run(request, name)
            except AdapterNotLoaded:  # evicted between lookup and use: load it again
                logger.info("adapter %s evicted before use; reloading", model_id)
        raise Overloaded(f"adapter {model_id!r} keeps being evicted; retry later")

    async def _run(self, request: GenerationRequest, adapter: str | None) -> Generation:
        """One request: alone (``serve.max_batch_size`` 1) or as a row of a batch."""
        if isinstance(self.backend, VLLMBackend):  # vLLM batches concurrent requests itself
            return await self.backend.agenerate(request, adapter)
        if not self.batching:
            return await asyncio.to_thread(self.backend.generate, request, adapter)
        (result,) = await self._merger.submit([(request, adapter)])
        if isinstance(result, Exception):  # that row failed, the rest of its batch did not
            raise result
        return result

    def _generate_rows(
        self, rows: list[tuple[GenerationRequest, str | None]]
    ) -> list[Generation | Exception]:
        self.most_adapters = max(self.most_adapters, len({adapter for _, adapter in rows}))
        return self.backend.generate_batch(rows)

    def stats(self) -> dict[str, Any]:
        """Loaded adapters (backend names and PEFT configs) and the load count, for tests/ops."""
        peft = getattr(self.backend, "peft_model", None)
        return {
            "base_model": self.base_model,
            "backend_adapters": self.backend.loaded_adapters,
            # what vLLM's engine itself holds (list_loras), by backend name
            "engine_adapters": self.backend.engine_adapters()
            if isinstance(self.backend, VLLMBackend)
            else None,
            "peft_adapters": sorted(peft.peft_config) if peft is not None else [],
            "loads": self.loads,
            "stacks": self.stacks.cache.keys() if self.stacks is not None else [],
            "multiplexed": self.loaded_models(),
            "evicted": dict(self.evicted),
        }


def final_event(gen: Generation, text: str) -> dict[str, Any]:
    """The last event of a generation's stream: ``text`` (what is left to send), why it
    ended and its token counts."""
    return {
        "text": text,
        "finish_reason": gen.finish_reason,
        "prompt_tokens": gen.prompt_tokens,
        "completion_tokens": gen.completion_tokens,
    }


def create_backend(cfg: QLPConfig) -> InferenceBackend:
    """The inference backend named by ``serve.backend`` on the configured base model."""

    if cfg.serve.backend == "vllm":
        reason = vllm_unavailable_reason()  # before building/loading any base model
        if reason is not None:
            raise ConfigError(f"`serve.backend` is 'vllm' but {reason}")
        s = cfg.serve
        backend = VLLMBackend(
            resolve_base_path(cfg),
            max_loras=s.vllm_max_loras,
            max_lora_rank=s.vllm_max_lora_rank,
            gpu_memory_utilization=s.vllm_gpu_memory_utilization,
            model_dtype=cfg.model.dtype,
        )
        logger.info("compositor: vllm on %s in %s", backend.device, backend.dtype)
        return backend
    if cfg.serve.backend == "openvino":  # exports the float32 model to an IR
        model, tokenizer = load_base(cfg)
        return OpenVINOBackend(
            model,
            tokenizer,
            device=cfg.serve.openvino_device,
            weight_format=cfg.serve.openvino_weight_format,
            lora_mode=cfg.serve.openvino_lora,
            cache_dir=cfg.paths.models / "openvino-ir",
        )
    # the transformers backend's decoder (batches, LoRA tables, the lean decoder) builds its
    # tensors on CPU, so the scheduler never places it on a GPU (hardware/replica_devices.py)
    # and it computes in float32 whatever model.dtype says (models/precision.py)
    dtype = resolve_dtype(cfg.model.dtype, DeviceFacts("cpu"))
    model, tokenizer = load_base(cfg, dtype=torch_dtype(dtype))
    logger.info("compositor: transformers on cpu in %s", dtype)
    return TransformersBackend(model, tokenizer, lean_forward=cfg.serve.lean_forward)


def _replica_name() -> str:
    """This Serve replica's id (the process id outside Serve)."""
    try:
        return str(serve.get_replica_context().replica_id.unique_id)
    except Exception:  # not in a replica
        return f"pid{os.getpid()}"


def compositor_deployment(cfg: QLPConfig) -> Any:
    """The Serve deployment object of the compositor, sized for ``cfg``."""
    return serve.deployment(
        name="Compositor",
        num_replicas=cfg.serve.compositor_replicas,
        max_replicas_per_node=cfg.serve.compositor_max_replicas_per_node,
        ray_actor_options=replica_options(
            cfg.serve.compositor_num_cpus,
            cfg.serve.compositor_num_gpus,
            cfg.serve.compositor_resources,
        ),
        # internal: the gateway logs each HTTP request; a log line per compositor call
        # would cost the replica's event loop (and the decoding thread's GIL) as much
        logging_config={"enable_access_log": False},
        **deployment_limits(cfg.serve, "compositor"),
    )(Compositor)
