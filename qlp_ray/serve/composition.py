"""Composed adapter stacks for the compositor: verify, compose, cache, prefetch.

:class:`StackComposer` turns a resolved :class:`AdapterStack` into one composed
adapter in the shared backend: every member is verified through the registry first
(404 naming an unknown member, 424 for a bad signature), then — in one step under the
backend lock — loaded under a temporary name, combined with PEFT
``add_weighted_adapter`` and unloaded again; the composed
adapter is held in an LRU + TTL :class:`CompositionCache` as an :class:`AdapterLease`
(freed once the requests still using it finish). Concurrent requests for the same
uncached stack compose it once. A version dropped by a hot-swap is *retired*: a request
that resolved its stack before the swap and composes it afterwards is still served, but
the stack is not cached again (its lease is freed when that request lets go of it).

:class:`PrefetchQueue` runs prefetches (adapters or stacks) one at a time in priority
order on the replica's event loop; ``submit`` returns at once.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
import logging
import re
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

from qlp_ray.core.errors import InvalidRequest, Overloaded, QLPError
from qlp_ray.models.backend import AdapterNotLoaded, Generation, GenerationRequest, InferenceBackend
from qlp_ray.models.composition import AdapterStack, choose_combination, parse_stack
from qlp_ray.models.composition_cache import CompositionCache
from qlp_ray.models.hf_backend import TransformersBackend, lora_rank

logger = logging.getLogger(__name__)

_USE_ATTEMPTS = 3

ResolvePath = Callable[[str, int | None], Path]


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

    def release(self) -> None:
        """Evict: free now if idle, else when the last user finishes (idempotent)."""
        with self._lock:
            self._evicted = True
            free = self._users == 0
        if free:
            self._free()

    def __del__(self) -> None:
        self.release()


class StackComposer:
    """Composes stacks on a :class:`TransformersBackend` and caches the results."""

    def __init__(
        self,
        backend: TransformersBackend,
        resolve_path: ResolvePath,
        *,
        combination: str = "linear",
        fallback: str | None = "cat",
        density: float = 0.5,
        cache_size: int = 16,
        ttl_s: float = 600.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        choose_combination(combination, {}, fallback)  # validates the name
        self.backend = backend
        self.combination = combination
        self.fallback = fallback
        self.density = density
        self._resolve_path = resolve_path
        self.cache: CompositionCache[AdapterLease] = CompositionCache(
            cache_size, ttl_s, on_remove=self._release, clock=clock
        )
        self._guard = threading.Lock()
        self._key_locks: dict[str, threading.Lock] = {}
        self.compositions = 0
        self.compose_ms_total = 0.0
        self.notes: dict[str, str] = {}  # stack key -> why the combination type changed
        self._retired: set[tuple[str, int]] = set()  # swapped-out versions, not cached again

    @staticmethod
    def _release(key: str, lease: AdapterLease, reason: str) -> None:
        lease.release()

    def _lock_for(self, key: str) -> threading.Lock:
        with self._guard:
            return self._key_locks.setdefault(key, threading.Lock())

    def get(self, stack: AdapterStack) -> AdapterLease:
        """The composed adapter of ``stack``: cached, or composed now (once per key)."""
        if not stack.resolved:
            raise InvalidRequest(f"stack {stack.key!r} has members without a version")
        lease = self.cache.get(stack.key)
        if lease is not None:
            return lease
        with self._lock_for(stack.key):
            if stack.key in self.cache:  # composed by a concurrent request meanwhile
                lease = self.cache.get(stack.key)
                if lease is not None:
                    return lease
            lease = self.compose(stack)
            with self._guard:  # against a swap retiring a member meanwhile (``invalidate``)
                retired = any((m.adapter_id, m.version) in self._retired for m in stack.members)
                if not retired:
                    self.cache.put(stack.key, lease)
            if retired:  # served to the request that asked, freed when it lets go (__del__)
                logger.info("stack %s holds a swapped-out version: not cached", stack.key)
        with self._guard:
            self._key_locks.pop(stack.key, None)
        return lease

    def compose(self, stack: AdapterStack) -> AdapterLease:
        """Verify every member, then compose them in one backend step; not cached."""
        t0 = time.perf_counter()
        paths = [self._resolve_path(m.adapter_id, m.version) for m in stack.members]
        ranks = {m.multiplex_id: lora_rank(p) for m, p in zip(stack.members, paths, strict=True)}
        combination, note = choose_combination(self.combination, ranks, self.fallback)
        if note:
            logger.warning("stack %s: %s", stack.key, note)
            self.notes[stack.key] = note
        lease = AdapterLease(self.backend, stack.key)
        self.backend.compose_from_dirs(
            lease.name,
            [str(p) for p in paths],
            [m.weight for m in stack.members],
            combination,
            density=self.density if combination == "ties" else None,
        )
        ms = (time.perf_counter() - t0) * 1000
        self.compositions += 1
        self.compose_ms_total += ms
        logger.info("composed stack %s (%s) in %.1f ms", stack.key, combination, ms)
        return lease

    def generate(self, stack: AdapterStack, request: GenerationRequest) -> Generation:
        """Generate with the composed ``stack`` (composing it on a cache miss)."""
        for _ in range(_USE_ATTEMPTS):
            lease = self.get(stack)
            try:
                with lease.use() as name:
                    gen = self.backend.generate(request, name)
            except AdapterNotLoaded:  # evicted between lookup and use
                logger.info("stack %s evicted before use; composing again", stack.key)
                continue
            gen.extra["stack"] = stack.key
            return gen
        raise Overloaded(f"stack {stack.key!r} keeps being evicted; retry later")

    def invalidate(
        self, adapter_id: str, version: int | None = None, current: int | None = None
    ) -> list[str]:
        """Drop cached stacks that contain ``adapter_id`` (at ``version``, when given).

        With both ``version`` and ``current`` (a hot-swap from ``version`` to ``current``)
        ``version`` is retired: stacks holding it, composed for requests still in flight,
        are not cached again until a later swap makes it current once more."""
        if version is not None and current is not None:
            with self._guard:
                self._retired.discard((adapter_id, current))
                self._retired.add((adapter_id, version))
        return self.cache.invalidate(lambda key: parse_stack(key).contains(adapter_id, version))

    def cached_stacks(self) -> list[AdapterStack]:
        return [parse_stack(k) for k in self.cache.keys()]

    def stats(self) -> dict[str, Any]:
        out = dict(self.cache.stats())
        out.update(
            combination=self.combination,
            fallback=self.fallback,
            compositions=self.compositions,
            mean_compose_ms=round(self.compose_ms_total / self.compositions, 2)
            if self.compositions
            else None,
            fallbacks=dict(self.notes),
        )
        return out


class PrefetchQueue:
    """Runs ``load(model_id)`` for submitted ids, highest priority first, one at a time."""

    def __init__(self, load: Callable[[str], Awaitable[Any]], history: int = 50) -> None:
        self._load = load
        self._queue: asyncio.PriorityQueue[tuple[int, int, str]] | None = None
        self._seq = itertools.count()
        self._worker: asyncio.Task[None] | None = None
        self.submitted = self.done = self.failed = 0
        self.recent: collections.deque[dict[str, Any]] = collections.deque(maxlen=history)

    def submit(self, model_ids: list[str], priority: int = 0) -> int:
        """Queue ``model_ids`` (must run on the event loop); returns the queue length."""
        if self._queue is None:
            self._queue = asyncio.PriorityQueue()
        for model_id in model_ids:
            self._queue.put_nowait((-priority, next(self._seq), model_id))
            self.submitted += 1
        if self._worker is None or self._worker.done():
            self._worker = asyncio.get_running_loop().create_task(self._run())
        return self._queue.qsize()

    async def _run(self) -> None:
        assert self._queue is not None
        while not self._queue.empty():
            neg_priority, _, model_id = await self._queue.get()
            t0 = time.perf_counter()
            entry: dict[str, Any] = {"model": model_id, "priority": -neg_priority}
            try:
                await self._load(model_id)
            except QLPError as exc:  # reported in stats; the queue goes on
                self.failed += 1
                entry.update(status="failed", error=exc.message)
                logger.warning("prefetch of %s failed: %s", model_id, exc.message)
            else:
                self.done += 1
                entry["status"] = "done"
            entry["ms"] = round((time.perf_counter() - t0) * 1000, 2)
            self.recent.append(entry)

    async def join(self, timeout_s: float) -> None:
        """Wait until the queue is drained (for tests and the warm swap)."""
        if self._worker is not None:
            await asyncio.wait_for(asyncio.shield(self._worker), timeout_s)

    def stats(self) -> dict[str, Any]:
        return {
            "submitted": self.submitted,
            "done": self.done,
            "failed": self.failed,
            "pending": self._queue.qsize() if self._queue is not None else 0,
            "recent": list(self.recent),
        }


__all__ = ["PrefetchQueue", "StackComposer"]
