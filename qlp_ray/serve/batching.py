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
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
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


@dataclass(eq=False)
class RowTicket:
    """One row's way back to its caller: the result, and (streaming) each token as it is
    decoded followed by the result. A cancelled ``future`` means the caller is gone."""

    future: asyncio.Future[Any]
    tokens: asyncio.Queue[Any] | None = None

    def deliver(self, result: Any) -> None:
        if not self.future.done():
            self.future.set_result(result)
        if self.tokens is not None:
            self.tokens.put_nowait(result)


class StepMerger:
    """Runs queued ``(request, adapter)`` rows through a backend's continuous decoder.

    One worker task alternates, in a thread, "admit what is queued (up to ``max_rows``
    running) + one decoding step". Rows the decoder cannot take (adapters that are not plain
    LoRA) run through ``backend.generate_batch`` at that point instead.
    :meth:`stream` hands out a row's tokens as the steps decode them. A row whose caller
    went away (its ``submit``/``stream`` cancelled or closed) leaves the decoder before the
    next step, so a disconnected client stops costing a slot.
    """

    def __init__(self, backend: Any, max_rows: int) -> None:
        self.backend = backend
        self.max_rows = max_rows
        self._decoder = backend.continuous_decoder()
        self._pending: deque[tuple[Any, RowTicket]] = deque()
        self._worker: asyncio.Task[None] | None = None
        # decoding steps ("batches"), prefills of joining rows, rows admitted, running rows
        # summed over the steps, most rows running at once; wall seconds spent in prefills
        # and in decoding steps (rows the decoder cannot take, run by generate_batch in the
        # same thread, count in neither), and the decoder thread's CPU seconds in each;
        # rows dropped because their caller was gone (queued or running)
        self.stats: dict[str, float] = {
            "batches": 0, "prefills": 0, "rows": 0, "row_steps": 0, "largest": 0,
            "prefill_s": 0.0, "step_s": 0.0, "prefill_cpu_s": 0.0, "step_cpu_s": 0.0,
            "cancelled": 0,
        }  # fmt: skip
        self.most_adapters = 0  # most distinct adapters running at once

    @property
    def running(self) -> int:
        """Rows in the decoder now."""
        return len(self._decoder)

    def _enqueue(self, row: tuple[Any, str | None], ticket: RowTicket) -> None:
        self._pending.append((row, ticket))
        if self._worker is None or self._worker.done():
            self._worker = asyncio.get_running_loop().create_task(self._drive())

    async def submit(self, rows: Sequence[tuple[Any, str | None]]) -> list[Any]:
        """Results (a ``Generation`` or the row's exception) for ``rows``, in order."""
        loop = asyncio.get_running_loop()
        tickets = [RowTicket(loop.create_future()) for _ in rows]
        for row, ticket in zip(rows, tickets, strict=True):
            self._enqueue(row, ticket)
        return list(await asyncio.gather(*(t.future for t in tickets)))

    async def stream(self, request: Any, adapter: str | None) -> AsyncIterator[Any]:
        """The row's token ids as they are decoded, then its result (a ``Generation``); its
        error is raised. Closing the iterator early cancels the row."""
        loop = asyncio.get_running_loop()
        ticket = RowTicket(loop.create_future(), asyncio.Queue())
        assert ticket.tokens is not None
        self._enqueue((request, adapter), ticket)
        try:
            while True:
                item = await ticket.tokens.get()
                if isinstance(item, Exception):
                    raise item
                yield item
                if not isinstance(item, int):
                    return
        finally:
            ticket.future.cancel()  # no-op when it has its result; else the row leaves

    async def _drive(self) -> None:
        while self._pending or len(self._decoder):
            joining = []
            while self._pending and len(self._decoder) + len(joining) < self.max_rows:
                row, ticket = self._pending.popleft()
                if ticket.future.cancelled():  # its caller left before it was admitted
                    self.stats["cancelled"] += 1
                else:
                    joining.append((row, ticket))
            # between ticks the decoder is this task's alone: read its rows here
            gone = [row.key for row in self._decoder.rows if row.key.future.cancelled()]
            emitted: list[tuple[Any, int]] = []
            try:
                done = await asyncio.to_thread(self._tick, joining, gone, emitted)
            except Exception as exc:  # a bug, not a row's error: fail what is in flight
                done = [(t, exc) for _, t in joining]
                done += [(row.key, exc) for row in self._decoder.rows]
                self._decoder = self.backend.continuous_decoder()
            for ticket, token in emitted:
                if ticket.tokens is not None:
                    ticket.tokens.put_nowait(token)
            for ticket, result in done:
                ticket.deliver(result)

    def _tick(
        self,
        joining: list[tuple[Any, RowTicket]],
        gone: list[RowTicket],
        emitted: list[tuple[Any, int]],
    ) -> list[tuple[Any, Any]]:
        """Drop ``gone`` rows, admit ``joining`` (or run the rows it cannot take), then one
        decoding step; the tokens decoded are appended to ``emitted``."""
        if gone:
            self.stats["cancelled"] += self._decoder.cancel(gone)
        steady, other = [], []
        for (request, adapter), ticket in joining:
            if self.backend.continuous_ok(request, adapter):
                steady.append((request, adapter, ticket))
            else:
                other.append(((request, adapter), ticket))
        done: list[tuple[Any, Any]] = []
        if other:
            results = self.backend.generate_batch([row for row, _ in other])
            done += [(t, r) for (_, t), r in zip(other, results, strict=True)]
        self.stats["rows"] += len(joining)
        if steady:
            self.stats["prefills"] += 1
            t0, cpu0 = time.perf_counter(), time.thread_time()
            done += self._decoder.admit(steady)
            emitted += self._decoder.emitted
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
            emitted += self._decoder.emitted
            self.stats["step_s"] += time.perf_counter() - t0
            self.stats["step_cpu_s"] += time.thread_time() - cpu0
        return done


__all__ = ["BatchMerger", "RowTicket", "StepMerger"]
