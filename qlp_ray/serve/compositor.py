"""Compositor deployment: one shared base model, signed adapters multiplexed on it (LRU).

Serve's ``@serve.multiplexed`` keeps at most ``serve.max_adapters_per_replica`` adapters
per replica. Its loader verifies the adapter through the registry (signature, files,
base model) before a single weight is read, then loads it into the shared
:class:`TransformersBackend`. On LRU eviction Serve calls the cached object's
``__del__``; :class:`AdapterLease` then frees the PEFT adapter — after the requests still
using it have finished. The multiplexed model id is ``"<adapter_id>@<version>"``.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
import logging
import re
import threading
import time
from collections.abc import Iterator
from typing import Any

from ray import serve

from qlp_ray.config import QLPConfig
from qlp_ray.errors import InvalidRequest, Overloaded
from qlp_ray.models.backend import GenerationRequest, InferenceBackend
from qlp_ray.models.hf_backend import AdapterNotLoaded

logger = logging.getLogger(__name__)

_LOAD_ATTEMPTS = 3


def multiplex_id(adapter_id: str, version: int | None) -> str:
    """The multiplexed model id of an adapter version."""
    return adapter_id if version is None else f"{adapter_id}@{version}"


def parse_multiplex_id(model_id: str) -> tuple[str, int | None]:
    """Inverse of :func:`multiplex_id`."""
    adapter_id, sep, version = model_id.rpartition("@")
    if not sep:
        return model_id, None
    if not version.isdigit():
        raise InvalidRequest(f"bad adapter version in {model_id!r}", param="model")
    return adapter_id, int(version)


class AdapterLease:
    """One adapter loaded in the backend, as held by Serve's multiplex LRU cache.

    Requests ``use()`` it; eviction (``__del__``, called by Serve) frees the backend
    adapter at once if idle, else when the last request using it finishes.
    """

    _counter = itertools.count()

    def __init__(self, backend: InferenceBackend, model_id: str) -> None:
        safe = re.sub(r"[^A-Za-z0-9_-]", "_", model_id)
        # unique per load, so freeing an old lease never unloads a newer load of the same id
        self.name = f"{safe}-{next(self._counter)}"
        self.model_id = model_id
        self._backend = backend
        self._lock = threading.Lock()
        self._users = 0
        self._evicted = False
        self._freed = False

    @contextlib.contextmanager
    def use(self) -> Iterator[str]:
        with self._lock:
            if self._evicted:
                raise AdapterNotLoaded(self.model_id)
            self._users += 1
        try:
            yield self.name
        finally:
            with self._lock:
                self._users -= 1
                free = self._evicted and self._users == 0
            if free:
                self._free()

    def _free(self) -> None:
        with self._lock:
            if self._freed:
                return
            self._freed = True
        self._backend.unload_adapter(self.name)
        logger.info("evicted adapter %s (%s)", self.model_id, self.name)

    def __del__(self) -> None:
        with self._lock:
            self._evicted = True
            free = self._users == 0
        if free:
            self._free()


class Compositor:
    """Serve deployment: generates with the base model or a multiplexed, verified adapter."""

    def __init__(self, config: dict[str, Any]) -> None:
        from qlp_ray.models.base import base_model_id, load_base
        from qlp_ray.models.hf_backend import TransformersBackend
        from qlp_ray.registry.store import Registry

        self.cfg = QLPConfig.model_validate(config)
        t0 = time.perf_counter()
        model, tokenizer = load_base(self.cfg)
        self.backend = TransformersBackend(model, tokenizer)
        self.base_model = base_model_id(self.cfg)
        self.registry = Registry(self.cfg)
        self.loads = 0
        # wired at init so the LRU size comes from the config (Serve detects this at runtime)
        self.get_adapter = serve.multiplexed(
            max_num_models_per_replica=self.cfg.serve.max_adapters_per_replica
        )(self._make_loader())
        logger.info("compositor ready (%s) in %.1f s", self.base_model, time.perf_counter() - t0)

    def _make_loader(self) -> Any:
        async def load_adapter(model_id: str) -> AdapterLease:
            adapter_id, version = parse_multiplex_id(model_id)
            t0 = time.perf_counter()
            path = await asyncio.to_thread(
                self.registry.verified_path,
                adapter_id,
                version,
                expected_base_model=self.base_model,
            )
            lease = AdapterLease(self.backend, model_id)
            await asyncio.to_thread(self.backend.load_adapter, lease.name, str(path))
            self.loads += 1
            logger.info(
                "verified and loaded %s in %.1f ms", model_id, (time.perf_counter() - t0) * 1000
            )
            return lease

        return load_adapter

    async def generate(self, request: dict[str, Any]) -> dict[str, Any]:
        """Generate for the request's multiplexed adapter ('' = base model, no adapter)."""
        gen_request = GenerationRequest(**request)
        model_id = serve.get_multiplexed_model_id()
        if not model_id:
            gen = await asyncio.to_thread(self.backend.generate, gen_request, None)
            return dataclasses.asdict(gen)
        for _ in range(_LOAD_ATTEMPTS):
            lease: AdapterLease = await self.get_adapter(model_id)
            try:
                with lease.use() as name:
                    gen = await asyncio.to_thread(self.backend.generate, gen_request, name)
                    return dataclasses.asdict(gen)
            except AdapterNotLoaded:  # evicted between lookup and use: load it again
                logger.info("adapter %s evicted before use; reloading", model_id)
        raise Overloaded(f"adapter {model_id!r} keeps being evicted; retry later")

    def stats(self) -> dict[str, Any]:
        """Loaded adapters (backend names and PEFT configs) and the load count, for tests/ops."""
        peft = self.backend.peft_model
        return {
            "base_model": self.base_model,
            "backend_adapters": self.backend.loaded_adapters,
            "peft_adapters": sorted(peft.peft_config) if peft is not None else [],
            "loads": self.loads,
        }


def compositor_deployment(cfg: QLPConfig) -> Any:
    """The Serve deployment object of the compositor, sized for ``cfg``."""
    return serve.deployment(
        name="Compositor",
        num_replicas=cfg.serve.compositor_replicas,
        ray_actor_options={"num_cpus": cfg.serve.compositor_num_cpus},
        max_ongoing_requests=16,
    )(Compositor)
