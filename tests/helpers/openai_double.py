"""A tiny OpenAI-compatible HTTP server for tests: a stand-in for a third-party endpoint.

Runs uvicorn + FastAPI in a thread on 127.0.0.1; answers ``POST /v1/completions`` and
``POST /v1/chat/completions`` in the OpenAI shape and records every request it receives
(path, headers, JSON body) so tests can assert what was forwarded. ``mode`` switches it
to failure behaviours: ``"error"`` (HTTP 500 with an OpenAI error body that echoes the
caller's Authorization header, as a careless vendor might), ``"slow"`` (answers after
``delay_s``), ``"garbage"`` (200 with a body lacking ``choices``), ``"busy"`` (HTTP 429
with ``Retry-After: 7``, a rate-limited vendor).
"""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

ANSWER = "42 is the answer from the external model."


class OpenAIDouble:
    """Start with :meth:`start`, stop with :meth:`stop` (or use as a context manager)."""

    def __init__(self, port: int, model: str = "gpt-4o-mini") -> None:
        self.port = port
        self.model = model
        self.url = f"http://127.0.0.1:{port}/v1"
        self.requests: list[dict[str, Any]] = []
        self.mode = "ok"
        self.delay_s = 2.0
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None

    def _app(self) -> FastAPI:
        app = FastAPI()

        async def answer(request: Request, chat: bool) -> Any:
            body = await request.json()
            self.requests.append(
                {"path": request.url.path, "headers": dict(request.headers), "json": body}
            )
            if self.mode == "error":
                auth = request.headers.get("authorization", "")
                return JSONResponse(
                    {"error": {"message": f"upstream exploded (you sent {auth})",
                               "type": "server_error", "param": None, "code": None}},
                    status_code=500,
                )  # fmt: skip
            if self.mode == "busy":
                return JSONResponse(
                    {"error": {"message": "Rate limit reached for requests",
                               "type": "requests", "param": None, "code": "rate_limit_exceeded"}},
                    status_code=429, headers={"retry-after": "7"},
                )  # fmt: skip
            if self.mode == "slow":
                await asyncio.sleep(self.delay_s)
            if self.mode == "garbage":
                return {"id": "x", "object": "text_completion"}
            choice: dict[str, Any] = {"index": 0, "finish_reason": "stop"}
            if chat:
                choice["message"] = {"role": "assistant", "content": ANSWER}
            else:
                choice["text"] = ANSWER
            return {
                "id": "ext-1",
                "object": "chat.completion" if chat else "text_completion",
                "created": int(time.time()),
                "model": body.get("model"),
                "choices": [choice],
                "usage": {"prompt_tokens": 11, "completion_tokens": 9, "total_tokens": 20},
            }

        @app.post("/v1/completions")
        async def completions(request: Request) -> Any:
            return await answer(request, chat=False)

        @app.post("/v1/chat/completions")
        async def chat(request: Request) -> Any:
            return await answer(request, chat=True)

        return app

    def start(self) -> OpenAIDouble:
        config = uvicorn.Config(
            self._app(), host="127.0.0.1", port=self.port, log_level="warning",
            timeout_graceful_shutdown=1,
        )  # fmt: skip
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError(f"the OpenAI test double did not start on port {self.port}")
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=10)

    def __enter__(self) -> OpenAIDouble:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
