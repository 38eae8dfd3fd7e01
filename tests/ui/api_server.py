"""The gateway's real admin and training routes on a real HTTP server (uvicorn in a
thread), without Ray: what the UI's page tests talk to.

The routes are the production ones (datasets, files, fine-tuning jobs, methods and
estimates, adapters, audit, analytics and its time series, improve decisions, devices,
the routing table and its evaluation) with the production auth and error handlers, over a
real registry, feedback store and home; the router is the real one built in this process
(``InProcessRouter``, as ``router.placement: gateway`` does; torch encoder), on first use.
The Ray Jobs API address points at a closed port, so job routes answer 503 as they do when
the dashboard is down; no Ray runs, so ``/v1/admin/devices`` answers 503 too.
``/health`` answers as ``Gateway.health`` does.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import httpx
import uvicorn
from fastapi import FastAPI

from qlp_ray.models.base import base_model_id
from qlp_ray.serve.http.errors import install_error_handlers
from qlp_ray.serve.http.routes_adapters import router as adapters_router
from qlp_ray.serve.http.routes_console import router as console_router
from qlp_ray.serve.http.routes_datasets import router as datasets_router
from qlp_ray.serve.http.routes_improve import router as improve_router
from qlp_ray.serve.http.routes_jobs import router as jobs_router
from qlp_ray.serve.http.routes_routing import router as routing_router
from qlp_ray.serve.http.routes_training import router as training_router
from qlp_ray.serve.telemetry.recording import RequestRecorder


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _ModelTable:
    """What the pointer routes call after a promotion: the gateway re-reads its adapters."""

    async def adapters(self, fresh: bool = False) -> dict[str, Any]:
        return {}


class _LazyRouter:
    """The gateway-placement router, built on the first call (a few seconds)."""

    def __init__(self, cfg: Any) -> None:
        self._config = cfg.model_copy(
            update={"router": cfg.router.model_copy(update={"embedding_backend": "torch"})}
        ).model_dump(mode="json")
        self._router: Any = None
        self._lock = threading.Lock()

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        with self._lock:
            if self._router is None:
                from qlp_ray.serve.local_router import InProcessRouter

                self._router = InProcessRouter(self._config)
        return getattr(self._router, name)


def build_app(cfg: Any) -> FastAPI:
    app = FastAPI()
    routers = (training_router, jobs_router, datasets_router, adapters_router, console_router,
               improve_router, routing_router)  # fmt: skip
    for router in routers:
        app.include_router(router)
    install_error_handlers(app)
    base = base_model_id(cfg)
    app.state.gateway = SimpleNamespace(
        cfg=cfg, models=_ModelTable(), recorder=RequestRecorder(cfg, base),
        router=_LazyRouter(cfg), external=None, base_model=base,
    )  # fmt: skip

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "base_model": base_model_id(cfg)}

    return app


@contextlib.contextmanager
def serving(cfg: Any) -> Iterator[str]:
    """The app on 127.0.0.1:<free port> for the block; its URL."""
    port = free_port()
    app = build_app(cfg)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 20
    while True:
        try:
            httpx.get(f"{url}/health", timeout=1)
            break
        except httpx.TransportError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)
    try:
        yield url
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        app.state.gateway.recorder.close()
