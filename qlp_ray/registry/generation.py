"""Notice registry changes cheaply: watch the store's generation marker.

The registry rewrites one small marker on every register, promote, rollback and retire
(``<registry>/.generation`` locally, ``generation.json`` on S3). A server keeps the
marker it last built from and, on the request path, re-reads it at most every
``poll_s`` seconds: a different value means its view of the registry is stale. Servers
use :meth:`GenerationWatch.changed_async`, which reads the marker in a worker thread: on
S3 the read is a network round trip that must not stall the event loop.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable


class GenerationWatch:
    """Says whether the marker moved since the last :meth:`commit` (polled, not pushed)."""

    def __init__(
        self,
        read: Callable[[], str | None],
        poll_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._read = read
        self.poll_s = float(poll_s)
        self._clock = clock
        self._checked_at = float("-inf")
        self.seen: str | None = None
        self.changes = 0  # how often a change was noticed (for the admin table)

    def snapshot(self) -> str | None:
        """Read the marker now; call before rebuilding, then :meth:`commit` what it returned
        (a change made during the rebuild is then still noticed afterwards)."""
        self._checked_at = self._clock()
        return self._read()

    def commit(self, generation: str | None) -> None:
        """Record that the server's view now matches ``generation``."""
        self.seen = generation

    def _due(self) -> bool:
        now = self._clock()
        if now - self._checked_at < self.poll_s:
            return False
        self._checked_at = now  # before reading: concurrent callers do not read again
        return True

    def _moved(self, marker: str | None) -> bool:
        moved = marker != self.seen
        self.changes += moved
        return moved

    def changed(self) -> bool:
        """Whether the marker differs from the committed one (re-read at most every poll_s)."""
        return self._due() and self._moved(self._read())

    async def changed_async(self) -> bool:
        """:meth:`changed` with the read in a worker thread (only when a read is due)."""
        return self._due() and self._moved(await asyncio.to_thread(self._read))


__all__ = ["GenerationWatch"]
