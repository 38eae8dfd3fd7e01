"""The gateway's request log writer: group commits from a background thread.

With SQLite's ``synchronous=FULL`` every commit waits for the disk. :class:`RequestLogWriter`
shares that wait: :meth:`submit` queues a row; one writer thread commits whatever is queued
in one transaction (``write_many``), so concurrent requests share one commit. A row may
carry ``on_commit(ok)``, called by the writer thread once its transaction committed (or
failed): the gateway's durable mode replies only then (group commit), the background mode
replies at once and the row reaches the disk one commit later (milliseconds).

Nothing is dropped silently: a failing batch is retried row by row, so one bad row (a
duplicate request id) fails alone; rows that still fail are counted in ``failed`` and
logged. :meth:`wait_committed` lets a reader that needs a row (feedback naming a request
id, an admin report) wait for it; :meth:`flush` waits for everything queued; :meth:`close`
flushes and stops the thread. When ``max_pending`` rows wait, :meth:`submit` blocks until
the writer catches up, so memory stays bounded if the store slows down.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

logger = logging.getLogger(__name__)

Callback = Callable[[bool], None]


class RequestLogWriter:
    """Queue rows (objects with an ``id``), commit them in batches on one thread."""

    def __init__(
        self,
        write_many: Callable[[Sequence[Any]], int],
        *,
        max_batch: int = 256,
        max_pending: int = 10_000,
        name: str = "qlp-request-log",
    ) -> None:
        self._write_many = write_many
        self.max_batch = max(int(max_batch), 1)
        self.max_pending = max(int(max_pending), 1)
        self._queue: deque[tuple[Any, Callback | None]] = deque()
        self._pending: dict[str, int] = {}  # id -> rows of that id queued or being written
        self._cond = threading.Condition()
        self._closed = False
        self.written = self.failed = self.batches = 0
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    # -- producer side --------------------------------------------------------------------
    def submit(self, row: Any, on_commit: Callback | None = None) -> None:
        """Queue ``row``; blocks only while ``max_pending`` rows wait for the writer.
        ``on_commit(ok)`` runs on the writer thread once the row is committed (``True``)
        or failed for good (``False``)."""
        with self._cond:
            if self._closed:
                raise RuntimeError("the request log writer is closed")
            while len(self._queue) >= self.max_pending and not self._closed:
                self._cond.wait()  # the writer notifies when it takes a batch
            self._queue.append((row, on_commit))
            self._pending[row.id] = self._pending.get(row.id, 0) + 1
            self._cond.notify_all()

    def full(self) -> bool:
        """Whether :meth:`submit` would block now."""
        return len(self._queue) >= self.max_pending

    @property
    def pending(self) -> int:
        """Rows queued or being written."""
        with self._cond:
            return sum(self._pending.values())

    def wait_committed(self, row_id: str, timeout: float = 5.0) -> bool:
        """Wait until no row with ``row_id`` is queued or being written; ``False`` on
        timeout. An id this writer never saw returns ``True`` at once."""
        return self._wait_until(lambda: row_id not in self._pending, timeout)

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until every row submitted so far is committed (or failed)."""
        return self._wait_until(lambda: not self._pending, timeout)

    def _wait_until(self, done: Callable[[], bool], timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        with self._cond:
            while not done():
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(left)
        return True

    def close(self, timeout: float = 10.0) -> bool:
        """Flush, then stop the writer thread; ``False`` if rows were still pending."""
        flushed = self.flush(timeout)
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._thread.join(timeout=max(timeout, 0.1))
        if not flushed:
            logger.error("request log closed with %d rows not written", self.pending)
        return flushed

    def stats(self) -> dict[str, int]:
        return {
            "written": self.written,
            "failed": self.failed,
            "batches": self.batches,
            "pending": self.pending,
        }

    # -- writer thread --------------------------------------------------------------------
    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._closed:
                    self._cond.wait()
                if not self._queue:  # closed and drained
                    return
                size = min(self.max_batch, len(self._queue))
                batch = [self._queue.popleft() for _ in range(size)]
                self._cond.notify_all()  # room for blocked producers
            oks = self._commit([row for row, _ in batch])
            with self._cond:  # counted before anyone is told: a waiter sees its row counted
                self.written += sum(oks)
                self.failed += len(oks) - sum(oks)
                self.batches += 1
            for (row, on_commit), ok in zip(batch, oks, strict=True):
                if on_commit is not None:
                    try:
                        on_commit(ok)
                    except Exception:  # a waiter's problem must not stop the writer
                        logger.exception("request log callback of %s failed", row.id)
            with self._cond:  # settled after its callback ran: flush() waits for both
                for row, _ in batch:
                    left = self._pending.get(row.id, 1) - 1
                    if left > 0:
                        self._pending[row.id] = left
                    else:
                        self._pending.pop(row.id, None)
                self._cond.notify_all()

    def _commit(self, batch: list[Any]) -> list[bool]:
        """Write ``batch`` in one transaction; on failure row by row. Per row: committed?"""
        try:
            self._write_many(batch)
            return [True] * len(batch)
        except Exception as exc:
            if len(batch) == 1:
                logger.error("could not write request %s to the request log: %s", batch[0].id, exc)
                return [False]
            logger.warning("request log batch of %d failed (%s); row by row now", len(batch), exc)
        oks = []
        for row in batch:
            try:
                self._write_many([row])
                oks.append(True)
            except Exception as exc:  # this row alone: keep the others
                oks.append(False)
                logger.error("could not write request %s to the request log: %s", row.id, exc)
        return oks


__all__ = ["RequestLogWriter"]
