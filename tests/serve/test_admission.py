"""Overload handling without Ray: admission limiter and middleware, back-pressure mapping,
Retry-After headers, deployment limits and their config checks."""

from __future__ import annotations

import asyncio

import httpx
import pytest
from fastapi import FastAPI
from ray.serve.config import BackpressureConfig
from ray.serve.exceptions import BackPressureError

from qlp_ray.core.config import ServeConfig, load_config
from qlp_ray.core.errors import ConfigError, InvalidRequest, Overloaded, RateLimited
from qlp_ray.serve.admission import AdmissionLimiter, AdmissionMiddleware, deployment_limits
from qlp_ray.serve.http.errors import install_error_handlers, qlp_error_response, unwrap


def test_limiter_never_waits_and_counts():
    lim = AdmissionLimiter(2, retry_after_s=1.0)
    assert lim.try_acquire() and lim.try_acquire()
    assert not lim.try_acquire() and not lim.try_acquire()
    assert lim.stats() == {"limit": 2, "in_flight": 2, "admitted": 2, "rejected": 2}
    lim.release()
    assert lim.try_acquire() and lim.in_flight == 2
    lim.release()
    lim.release()
    with pytest.raises(RuntimeError, match="without a matching acquire"):
        lim.release()
    unlimited = AdmissionLimiter(0, retry_after_s=1.0)
    assert all(unlimited.try_acquire() for _ in range(1000))
    with pytest.raises(ValueError, match="-1"):
        AdmissionLimiter(-1, retry_after_s=1.0)


def _app(limit: int, retry_after_s: float) -> tuple[FastAPI, asyncio.Event]:
    app = FastAPI()
    app.add_middleware(AdmissionMiddleware)
    install_error_handlers(app)
    app.state.admission = AdmissionLimiter(limit, retry_after_s)
    gate = asyncio.Event()

    @app.post("/v1/completions")
    async def completions() -> dict:
        await gate.wait()
        return {"ok": True}

    @app.post("/v1/chat/completions")
    async def chat() -> dict:
        raise InvalidRequest("bad messages", param="messages")

    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok"}

    return app, gate


async def _wait_for(predicate, timeout_s: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not predicate():
        assert asyncio.get_running_loop().time() < deadline, "condition not met"
        await asyncio.sleep(0.005)


def test_middleware_answers_429_with_retry_after_then_recovers():
    async def scenario() -> None:
        app, gate = _app(limit=1, retry_after_s=2.5)
        limiter: AdmissionLimiter = app.state.admission
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            first = asyncio.create_task(client.post("/v1/completions", json={}))
            await _wait_for(lambda: limiter.in_flight == 1)
            rejected = await client.post("/v1/completions", json={})
            assert rejected.status_code == 429
            assert rejected.headers["retry-after"] == "3"  # 2.5 s rounded up
            err = rejected.json()["error"]
            assert set(err) == {"message", "type", "param", "code"}
            assert err["code"] == "rate_limit_exceeded" and err["type"] == "rate_limit_error"
            assert "limit 1" in err["message"]
            health = await client.get("/health")  # other routes are never limited
            assert health.status_code == 200
            gate.set()
            assert (await first).status_code == 200
            assert limiter.in_flight == 0
            assert (await client.post("/v1/completions", json={})).status_code == 200
            # an error inside the route releases its slot too
            bad = await client.post("/v1/chat/completions", json={})
            assert bad.status_code == 400 and "retry-after" not in bad.headers
            assert limiter.stats() == {"limit": 1, "in_flight": 0, "admitted": 3, "rejected": 1}

    asyncio.run(scenario())


def test_middleware_strips_root_path():
    async def scenario() -> None:
        app, gate = _app(limit=1, retry_after_s=1.0)
        transport = httpx.ASGITransport(app=app, root_path="/api")
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            first = asyncio.create_task(client.post("/api/v1/completions", json={}))
            await _wait_for(lambda: app.state.admission.in_flight == 1)
            assert (await client.post("/api/v1/completions", json={})).status_code == 429
            gate.set()
            await first

    asyncio.run(scenario())


@pytest.mark.parametrize(
    ("status", "retry", "cls", "header"),
    [(503, 2.2, Overloaded, "3"), (429, 0.0, RateLimited, "0"), (503, None, Overloaded, "1")],
)
def test_backpressure_becomes_openai_error_with_retry_after(status, retry, cls, header):
    err = unwrap(BackPressureError(3, 1, status_code=status, retry_after_s=retry))
    assert type(err) is cls and err.http_status == status
    assert "max_queued_requests=1" in err.message
    resp = qlp_error_response(err)
    assert resp.status_code == status and resp.headers["retry-after"] == header


def test_errors_without_retry_after_send_no_header():
    assert "retry-after" not in qlp_error_response(InvalidRequest("x")).headers
    assert Overloaded("busy").retry_after_s is None
    assert Overloaded("busy", retry_after_s=4).retry_after_s == 4


def test_deployment_limits_come_from_config():
    s = ServeConfig(
        compositor_max_ongoing_requests=3, compositor_max_queued_requests=7, retry_after_s=5
    )
    opts = deployment_limits(s, "compositor")
    assert opts["max_ongoing_requests"] == 3 and opts["max_queued_requests"] == 7
    assert opts["backpressure_config"] == BackpressureConfig(status_code=503, retry_after_s=5)
    assert deployment_limits(s, "gateway")["max_queued_requests"] == -1
    assert opts["graceful_shutdown_wait_loop_s"] == 0.5  # not Serve's 2 s per stop
    with pytest.raises(ValueError, match="unknown deployment"):
        deployment_limits(s, "proxy")


def test_admission_above_serve_limit_is_a_config_error():
    with pytest.raises(ConfigError, match="gateway_admission_limit"):
        load_config(
            overrides={"serve": {"gateway_admission_limit": 10, "gateway_max_ongoing_requests": 5}},
            environ={},
        )
    cfg = load_config(environ={})
    assert cfg.serve.gateway_admission_limit <= cfg.serve.gateway_max_ongoing_requests
