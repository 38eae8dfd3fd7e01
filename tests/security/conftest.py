"""The gateway's real routers, auth, error handlers and body cap in one FastAPI app without
Ray (the Serve-only routes, completions and models, are covered by tests/serve)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
from fastapi import FastAPI, Request
from fastapi.testclient import TestClient

from qlp_ray.core.api_keys import create_key, key_file
from qlp_ray.core.config import load_config
from qlp_ray.core.errors import AuthenticationError
from qlp_ray.serve.http.auth import caller_of
from qlp_ray.serve.http.errors import install_error_handlers, qlp_error_response
from qlp_ray.serve.http.limits import BodyLimitMiddleware
from qlp_ray.serve.http.routes_adapters import router as adapters_router
from qlp_ray.serve.http.routes_console import router as console_router
from qlp_ray.serve.http.routes_datasets import router as datasets_router
from qlp_ray.serve.http.routes_experiments import router as experiments_router
from qlp_ray.serve.http.routes_improve import router as improve_router
from qlp_ray.serve.http.routes_jobs import router as jobs_router
from qlp_ray.serve.http.routes_training import router as training_router
from qlp_ray.serve.telemetry.recording import RequestRecorder

ROLES = ("user", "trainer", "reviewer", "admin")


def build_app(cfg: Any) -> FastAPI:
    """What gateway.py assembles, minus the Serve ingress class."""
    app = FastAPI(title="qlp_ray security")
    for router in (improve_router, training_router, jobs_router, datasets_router,
                   adapters_router, experiments_router, console_router):  # fmt: skip
        app.include_router(router)

    @app.middleware("http")
    async def _api_key_first(request: Request, call_next: Any) -> Any:  # as gateway.py
        if request.url.path != "/health":
            try:
                caller_of(request)
            except AuthenticationError as exc:
                return qlp_error_response(exc)
        return await call_next(request)

    install_error_handlers(app)
    app.add_middleware(BodyLimitMiddleware)
    recorder = RequestRecorder(cfg, "base")
    app.state.gateway = SimpleNamespace(cfg=cfg, recorder=recorder, base_model="base")
    app.state.max_body_bytes = cfg.serve.max_body_bytes
    return app


def make_cfg(home: Any, serve: dict[str, Any] | None = None, **sections: Any) -> Any:
    overrides = {"paths": {"home": str(home)}, "serve": serve or {},
                 "store": {"request_log_commit": "inline"}, **sections}  # fmt: skip
    return load_config(overrides=overrides, environ={})


@pytest.fixture()
def keyed(tmp_path):
    """An app whose key file holds one key per role; ``(client, {role: key}, cfg)``."""
    cfg = make_cfg(tmp_path)
    keys = {role: create_key(key_file(cfg.paths.keys), role, role)[0] for role in ROLES}
    app = build_app(cfg)
    with TestClient(app) as client:
        yield client, keys, cfg
    app.state.gateway.recorder.close()


def bearer(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}
