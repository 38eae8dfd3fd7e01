"""Continuous batching of compositor requests: one backend batch at a time.

Every request queues its row; whenever the backend is free, one ``run`` call takes all
queued rows (up to ``max_rows``), so the next batch is everything that arrived while the
previous one generated, as in vLLM / S-LoRA schedulers. A lone request on an idle replica
runs at once (no timer), and under load batches grow with the arrival rate. (Serve's
``@serve.batch`` is not used here: it splits batches by multiplexed model id, and mixing
adapters in one batch is the point.)
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable, Sequence
from typing import Generic, TypeVar

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


__all__ = ["BatchMerger"]
