"""Caller-side coalescing of routing calls to the Router deployment.

Every ``model=auto`` request makes the gateway call the Router deployment, and on a small
machine a Serve handle call costs more CPU (both sides together, ~3 ms here) than the
embedding of a title in a batch (~1 ms). :class:`CoalescingRouter` keeps the handle's call
shape (``await router.route.remote(text)``) but sends concurrent calls of this process as
one ``route_many`` call: at most :data:`MAX_CALLS` calls are in flight, and the texts
arriving meanwhile travel together in the next one (up to ``max_texts``). There is no
timer: a lone request goes at once, so an idle gateway adds no latency. The Router encodes
each ``route_many`` call's texts as one batch; its ``@serve.batch`` merges single ``route``
calls (other callers).
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Any

MAX_CALLS = 2  # one call being answered while the next one fills


class _CoalescedRoute:
    """``route.remote(text)`` → an awaitable decision, sent with its neighbours."""

    def __init__(self, handle: Any, max_texts: int) -> None:
        self._handle = handle
        self.max_texts = max(int(max_texts), 1)
        self._pending: deque[tuple[str, asyncio.Future[dict[str, Any]]]] = deque()
        self._calls = 0
        self.stats = {"calls": 0, "texts": 0}

    def remote(self, text: str) -> asyncio.Future[dict[str, Any]]:
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending.append((text, future))
        self._pump()
        return future

    def _pump(self) -> None:
        while self._pending and self._calls < MAX_CALLS:
            batch = []
            while self._pending and len(batch) < self.max_texts:
                text, future = self._pending.popleft()
                if not future.cancelled():
                    batch.append((text, future))
            if not batch:
                return
            self._calls += 1
            self.stats["calls"] += 1
            self.stats["texts"] += len(batch)
            asyncio.get_running_loop().create_task(self._send(batch))

    async def _send(self, batch: list[tuple[str, asyncio.Future[dict[str, Any]]]]) -> None:
        try:
            decisions = await self._handle.route_many.remote([text for text, _ in batch])
        except Exception as exc:  # the router failed the call: every text in it fails
            for _, future in batch:
                if not future.done():
                    future.set_exception(exc)
        else:
            for (_, future), decision in zip(batch, decisions, strict=True):
                if not future.done():
                    future.set_result(decision)
        finally:
            self._calls -= 1
            self._pump()


class CoalescingRouter:
    """A Router deployment handle whose ``route`` calls are coalesced (other methods pass
    through unchanged)."""

    def __init__(self, handle: Any, max_texts: int) -> None:
        self._handle = handle
        self.route = _CoalescedRoute(handle, max_texts)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._handle, name)


__all__ = ["MAX_CALLS", "CoalescingRouter"]
