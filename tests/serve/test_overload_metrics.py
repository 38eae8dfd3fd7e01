"""Overload answers 429/503 with Retry-After, and Ray's Prometheus endpoint exports our metrics.

The session's Ray (it has a metrics export port), the app deployed with tiny limits
(gateway admission 4, compositor max_ongoing 1 / max_queued 1) on the session's Serve port;
a burst of concurrent requests, then a scrape of ``http://127.0.0.1:<metrics port>/metrics``.
Other modules' apps export to the same endpoint, so every expected count names this app.
"""

from __future__ import annotations

import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from tests.helpers.ray_start import SERVE_PORT, SERVE_URL, deployed
from tests.serve.test_compositor_http import save_random_adapter

pytestmark = pytest.mark.integration

ADAPTER = "dataeng"
APP = "qlp_overload"
BURST = 20
RETRY_AFTER_S = 2
BURST_MAX_TOKENS = 96
URL = SERVE_URL


@pytest.fixture(scope="module")
def ray_metrics(ray_session):
    """The URL where the session's Ray exports Prometheus text."""
    return ray_session.metrics_url


@pytest.fixture(scope="module")
def app(tmp_path_factory, ray_metrics):
    from qlp_ray.core.config import load_config
    from qlp_ray.models.base import base_model_id, load_base
    from qlp_ray.registry.signing import init_keys
    from qlp_ray.registry.store import Registry

    os.environ["HF_HUB_OFFLINE"] = "1"
    home: Path = tmp_path_factory.mktemp("qlp_home")
    serve_cfg = {
        "port": SERVE_PORT,
        "app_name": APP,
        "compositor_num_cpus": 0.5,
        "router_num_cpus": 0.25,
        "max_tokens_limit": 128,
        "gateway_admission_limit": 4,
        "gateway_max_ongoing_requests": 32,
        "compositor_max_ongoing_requests": 1,
        "compositor_max_queued_requests": 1,
        "retry_after_s": RETRY_AFTER_S,
    }
    cfg = load_config(
        overrides={
            "paths": {"home": str(home)},
            "model": {"tiny": {"pretrain_steps": 10, "hidden_size": 64, "num_layers": 2}},
            "serve": serve_cfg,
        },
        environ={},
    )
    base, _ = load_base(cfg)
    init_keys(cfg.paths.keys)
    adapter_dir = save_random_adapter(base, home / "src" / ADAPTER, seed=1)
    Registry(cfg).register(
        adapter_dir, adapter_id=ADAPTER, domain=ADAPTER, base_model=base_model_id(cfg)
    )
    with deployed(cfg):
        yield cfg


def _complete(max_tokens: int = 8) -> httpx.Response:
    body = {"model": ADAPTER, "prompt": "Write a SQL join", "max_tokens": max_tokens}
    return httpx.post(f"{URL}/v1/completions", json=body, timeout=120)


@pytest.fixture(scope="module")
def burst(app):
    """Warm the adapter, fire ``BURST`` concurrent requests, then one normal request."""
    assert _complete().status_code == 200  # loads and verifies the adapter first
    start = threading.Barrier(BURST)

    def one(_: int) -> httpx.Response:
        start.wait()
        return _complete(BURST_MAX_TOKENS)

    with ThreadPoolExecutor(BURST) as pool:
        responses = list(pool.map(one, range(BURST)))
    after = _complete()
    return {"responses": responses, "after": after}


def test_burst_gets_429_and_503_with_retry_after_and_recovers(burst):
    statuses = [r.status_code for r in burst["responses"]]
    assert set(statuses) <= {200, 429, 503}, statuses  # never a 500
    assert statuses.count(200) >= 1, statuses
    assert statuses.count(429) >= 1, statuses  # gateway admission (limit 4)
    assert statuses.count(503) >= 1, statuses  # compositor queue (1 running + 1 queued)
    for r in burst["responses"]:
        if r.status_code == 200:
            assert r.json()["choices"][0]["text"] is not None
            continue
        assert r.headers["retry-after"] == str(RETRY_AFTER_S)
        err = r.json()["error"]
        assert set(err) == {"message", "type", "param", "code"}
        expected = {429: "rate_limit_exceeded", 503: "overloaded"}[r.status_code]
        assert err["code"] == expected, err
        assert "retry after" in err["message"]
    after = burst["after"]
    assert after.status_code == 200 and after.json()["model"] == ADAPTER  # recovered


def test_health_and_models_are_not_admission_limited(app):
    with ThreadPoolExecutor(8) as pool:
        codes = list(pool.map(lambda _: httpx.get(f"{URL}/health", timeout=60).status_code,
                              range(8)))  # fmt: skip
    assert codes == [200] * 8


def _scrape(url: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    from prometheus_client.parser import text_string_to_metric_families

    samples: dict[str, list[tuple[dict[str, str], float]]] = {}
    text = httpx.get(url, timeout=10).text
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples.setdefault(s.name, []).append((s.labels, s.value))
    return samples


def _total(samples, name: str, **labels: str) -> float:
    return sum(
        v for lab, v in samples.get(name, []) if all(lab.get(k) == x for k, x in labels.items())
    )


def test_ray_metrics_endpoint_exports_our_metrics(burst, ray_metrics):
    import json
    import re

    from qlp_ray.core.config import REPO_ROOT
    from qlp_ray.serve.telemetry import metrics

    statuses = [r.status_code for r in burst["responses"]]
    served = statuses.count(200) + 2  # + the warm-up and the request after the burst
    app = ("application", APP)  # Serve's own label: other modules' apps count elsewhere
    want = {
        ("ray_qlp_model_requests_total", app, ("model", ADAPTER), ("domain", ADAPTER)): served,
        # Serve's own labels: which application and deployment recorded it
        ("ray_qlp_model_requests_total", app, ("deployment", "Gateway")): served,
        ("ray_qlp_model_latency_seconds_count", app, ("model", ADAPTER)): served,
        ("ray_qlp_model_latency_seconds_bucket", app, ("model", ADAPTER), ("le", "+Inf")): served,
        ("ray_qlp_rejected_requests_total", app, ("code", "rate_limit_exceeded")): statuses.count(
            429
        ),
        ("ray_qlp_rejected_requests_total", app, ("code", "overloaded")): statuses.count(503),
    }
    deadline = time.monotonic() + 60  # Ray's agent exports every few seconds
    while True:
        samples = _scrape(ray_metrics)
        got = {k: _total(samples, k[0], **dict(k[1:])) for k in want}
        if got == want or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert got == want
    assert "ray_qlp_cost_savings_usd" in samples
    # the names the Grafana dashboard queries are the names Ray really exports
    dashboard = json.loads((REPO_ROOT / "configs/grafana/qlp_dashboard.json").read_text())
    exprs = " ".join(t["expr"] for p in dashboard["panels"] for t in p["targets"])
    queried = set(re.findall(r"\b(ray_qlp_[a-z_]+)\b", exprs))
    emitted_here = {
        metrics.EXPORT_PREFIX + n
        for n in (metrics.REQUESTS_TOTAL, metrics.COST_SAVINGS_USD, metrics.REJECTED_TOTAL)
    } | {f"{metrics.EXPORT_PREFIX}{metrics.LATENCY_SECONDS}_bucket"}
    assert emitted_here <= queried
    assert emitted_here <= set(samples)


def test_proxy_rejects_with_retry_after_when_gateway_queue_is_full(app):
    """Serve's own proxy answers a full gateway queue: 503, Retry-After, plain-text body."""
    import asyncio

    from ray import serve

    from qlp_ray.serve.admission import deployment_limits

    limits = app.serve.model_copy(
        update={"gateway_max_ongoing_requests": 1, "gateway_max_queued_requests": 1}
    )

    @serve.deployment(name="SlowIngress", **deployment_limits(limits, "gateway"))
    class SlowIngress:
        async def __call__(self, request) -> str:
            await asyncio.sleep(0.5)  # the work that keeps the single slot busy
            return "done"

    serve.run(SlowIngress.bind(), name="proxy_probe", route_prefix="/proxy_probe")
    try:
        start = threading.Barrier(6)

        def one(_: int) -> httpx.Response:
            start.wait()
            return httpx.get(f"{URL}/proxy_probe", timeout=60)

        with ThreadPoolExecutor(6) as pool:
            responses = list(pool.map(one, range(6)))
    finally:
        serve.delete("proxy_probe")
    statuses = sorted(r.status_code for r in responses)
    assert set(statuses) == {200, 503}, statuses
    for r in responses:
        if r.status_code == 503:
            assert r.headers["retry-after"] == str(RETRY_AFTER_S)
            assert r.text.startswith("Request dropped due to backpressure"), r.text
