"""A cap on request body size: a larger body gets a 413 before anything parses it.

Pure ASGI (not ``@app.middleware``) so a body sent without ``Content-Length`` (chunked) is
counted while it streams in, not read whole first: past the cap the app sees the client
disconnect, and its answer is replaced by the 413. The limit comes from
``app.state.max_body_bytes`` (``serve.max_body_bytes``; unset = no cap).
"""

from __future__ import annotations

import time
from collections import deque
from typing import Any

from qlp_ray.core.errors import PayloadTooLarge, RateLimited
from qlp_ray.serve.http.errors import qlp_error_response


def _too_large(limit: int) -> PayloadTooLarge:
    return PayloadTooLarge(f"request body exceeds {limit} bytes (serve.max_body_bytes)")


class BodyLimitMiddleware:
    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        limit = None
        if scope["type"] == "http":
            state = getattr(scope.get("app"), "state", None)
            limit = getattr(state, "max_body_bytes", None)
        if not limit:
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        declared = headers.get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            await _send_413(send, limit)
            return
        seen = 0
        exceeded = False
        started = False

        async def counted_receive() -> dict:
            # past the cap the app sees a client that went away; its answer is dropped
            nonlocal seen, exceeded
            if exceeded:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    exceeded = True
                    return {"type": "http.disconnect"}
            return message

        async def tracked_send(message: dict) -> None:
            nonlocal started
            if exceeded and not started:
                return
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted_receive, tracked_send)
        except Exception:
            if not exceeded:
                raise
        if exceeded and not started:
            await _send_413(send, limit)


async def _send_413(send: Any, limit: int) -> None:
    await qlp_error_response(_too_large(limit))({"type": "http"}, None, send)


class PerKeyRate:
    """At most ``per_minute`` events per key in any 60 s (a sliding window); the next one
    raises :class:`RateLimited` with the seconds until a slot frees up."""

    def __init__(self, per_minute: int, window_s: float = 60.0, max_keys: int = 100_000):
        self.per_minute = per_minute
        self.window_s = window_s
        self.max_keys = max_keys
        self._seen: dict[str, deque[float]] = {}

    def take(self, key: str) -> None:
        now = time.monotonic()
        if len(self._seen) >= self.max_keys:  # bounded memory: forget idle keys
            self._seen = {k: q for k, q in self._seen.items() if q and q[-1] > now - self.window_s}
        times = self._seen.setdefault(key, deque())
        while times and times[0] <= now - self.window_s:
            times.popleft()
        if len(times) >= self.per_minute:
            wait = times[0] + self.window_s - now
            raise RateLimited(
                f"too many feedback posts: {self.per_minute} a minute per API key "
                f"(serve.feedback_per_minute); retry after {wait:.0f} s",
                retry_after_s=wait,
            )
        times.append(now)


__all__ = ["BodyLimitMiddleware", "PerKeyRate"]
