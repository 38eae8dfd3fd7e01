"""Batching of compositor requests across adapters, at two granularities.

* :class:`StepMerger` (default for the transformers backend): iteration-level batching.
  Queued rows join the running batch at the next decoding step and leave it when done
  (``models/continuous.py``), as in Orca / vLLM schedulers, so rows arriving while others
  generate do not wait for them to finish.
* :class:`BatchMerger`: request-level batching. Whenever the backend is free, one ``run``
  call takes all queued rows (up to ``max_rows``): the next batch is everything that
  arrived while the previous one generated.

Either way a lone request on an idle replica runs at once (no timer) and batches grow
with the load. (Serve's ``@serve.batch`` is not used: it splits batches by multiplexed
model id, and mixing adapters in one batch is the point.)
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any, Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")


class BatchMerger(Generic[T, R]):
    """Runs queued rows through ``run`` (a blocking batch function) in merged batches."""

    def __init__(self, run: Callable[[list[T]], list[R]], max_rows: int) -> None:
        self._run = run
        self.max_rows = max_rows
        self._pending: deque[tuple[list[T], asyncio.Future[list[R]]]] = deque()
        self._worker: asyncio.Task[None] | None = None
        # backend batches, rows in them, the largest one
        self.stats = {"batches": 0, "rows": 0, "largest": 0}

    async def submit(self, rows: Sequence[T]) -> list[R]:
        """``run``'s results for ``rows`` (in order), possibly batched with other rows."""
        future: asyncio.Future[list[R]] = asyncio.get_running_loop().create_future()
        self._pending.append((list(rows), future))
        if self._worker is None or self._worker.done():
            self._worker = asyncio.get_running_loop().create_task(self._drain())
        return await future

    def _take(self) -> list[tuple[list[T], asyncio.Future[list[R]]]]:
        taken = [self._pending.popleft()]
        size = len(taken[0][0])
        while self._pending and size + len(self._pending[0][0]) <= self.max_rows:
            size += len(self._pending[0][0])
            taken.append(self._pending.popleft())
        return taken

    async def _drain(self) -> None:
        while self._pending:
            taken = [t for t in self._take() if not t[1].cancelled()]
            rows = [row for group, _ in taken for row in group]
            if not rows:
                continue
            self.stats["batches"] += 1
            self.stats["rows"] += len(rows)
            self.stats["largest"] = max(self.stats["largest"], len(rows))
            try:
                results = await asyncio.to_thread(self._run, rows)
            except Exception as exc:  # the backend batch failed: each of its groups fails
                for _, future in taken:
                    if not future.done():
                        future.set_exception(exc)
                continue
            start = 0
            for group, future in taken:
                if not future.done():
                    future.set_result(results[start : start + len(group)])
                start += len(group)


class StepMerger:
    """Runs queued ``(request, adapter)`` rows through a backend's continuous decoder.

    One worker task alternates, in a thread, "admit what is queued (up to ``max_rows``
    running) + one decoding step". Rows the decoder cannot take (sampled rows, adapters
    that are not plain LoRA) run through ``backend.generate_batch`` at that point instead.
    """

    def __init__(self, backend: Any, max_rows: int) -> None:
        self.backend = backend
        self.max_rows = max_rows
        self._decoder = backend.continuous_decoder()
        self._pending: deque[tuple[Any, asyncio.Future[Any]]] = deque()
        self._worker: asyncio.Task[None] | None = None
        # decoding steps ("batches"), prefills of joining rows, rows admitted, running rows
        # summed over the steps, most rows running at once; wall seconds spent in prefills
        # and in decoding steps (rows the decoder cannot take, run by generate_batch in the
        # same thread, count in neither), and the decoder thread's CPU seconds in each
        self.stats: dict[str, float] = {
            "batches": 0, "prefills": 0, "rows": 0, "row_steps": 0, "largest": 0,
            "prefill_s": 0.0, "step_s": 0.0, "prefill_cpu_s": 0.0, "step_cpu_s": 0.0,
        }  # fmt: skip
        self.most_adapters = 0  # most distinct adapters running at once

    async def submit(self, rows: Sequence[tuple[Any, str | None]]) -> list[Any]:
        """Results (a ``Generation`` or the row's exception) for ``rows``, in order."""
        loop = asyncio.get_running_loop()
        futures = [loop.create_future() for _ in rows]
        self._pending.extend(zip(rows, futures, strict=True))
        if self._worker is None or self._worker.done():
            self._worker = loop.create_task(self._drive())
        return list(await asyncio.gather(*futures))

    async def _drive(self) -> None:
        while self._pending or len(self._decoder):
            joining = []
            while self._pending and len(self._decoder) + len(joining) < self.max_rows:
                row, future = self._pending.popleft()
                if not future.cancelled():
                    joining.append((row, future))
            try:
                done = await asyncio.to_thread(self._tick, joining)
            except Exception as exc:  # a bug, not a row's error: fail what is in flight
                done = [(f, exc) for _, f in joining]
                done += [(row.key, exc) for row in self._decoder.rows]
                self._decoder = self.backend.continuous_decoder()
            for future, result in done:
                if not future.done():
                    future.set_result(result)

    def _tick(self, joining: list[tuple[Any, asyncio.Future[Any]]]) -> list[tuple[Any, Any]]:
        """Admit ``joining`` (or run the rows it cannot take), then one decoding step."""
        steady, other = [], []
        for (request, adapter), future in joining:
            if self.backend.continuous_ok(request, adapter):
                steady.append((request, adapter, future))
            else:
                other.append(((request, adapter), future))
        done: list[tuple[Any, Any]] = []
        if other:
            results = self.backend.generate_batch([row for row, _ in other])
            done += [(f, r) for (_, f), r in zip(other, results, strict=True)]
        self.stats["rows"] += len(joining)
        if steady:
            self.stats["prefills"] += 1
            t0, cpu0 = time.perf_counter(), time.thread_time()
            done += self._decoder.admit(steady)
            self.stats["prefill_s"] += time.perf_counter() - t0
            self.stats["prefill_cpu_s"] += time.thread_time() - cpu0
        running = len(self._decoder)
        if running:
            self.stats["batches"] += 1
            self.stats["row_steps"] += running
            self.stats["largest"] = max(self.stats["largest"], running)
            self.most_adapters = max(
                self.most_adapters, len({row.adapter for row in self._decoder.rows})
            )
            t0, cpu0 = time.perf_counter(), time.thread_time()
            done += self._decoder.step()
            self.stats["step_s"] += time.perf_counter() - t0
            self.stats["step_cpu_s"] += time.thread_time() - cpu0
        return done


__all__ = ["BatchMerger", "StepMerger"]
