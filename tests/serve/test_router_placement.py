"""``router.placement: gateway`` on real Serve over HTTP (session port): no Router deployment,
the gateway routes ``model=auto`` in its own process, the routing table still follows the
registry (``GET /v1/models`` refreshes it), and decisions equal the Router deployment's."""

from __future__ import annotations

import httpx
import pytest

from tests.helpers.ray_start import SERVE_PORT, SERVE_URL
from tests.serve.test_serve_http import API_KEY, build_stack

pytestmark = pytest.mark.integration

PORT, URL = SERVE_PORT, SERVE_URL
AUTH = {"authorization": f"Bearer {API_KEY}"}
APP = "qlp_placement"
PROMPTS = {
    "dataeng": "Write a SQL query to load yesterday's Parquet partition into the warehouse.",
    "frontend": "My React component re-renders too often; how do I memoize it with hooks?",
}


@pytest.fixture(scope="module")
def gateway_app(tmp_path_factory, ray_local):
    from ray import serve

    from qlp_ray.serve.app import build_app, wait_healthy

    cfg, registry, dirs = build_stack(tmp_path_factory.mktemp("qlp_home"))
    cfg = cfg.model_copy(
        update={
            "serve": cfg.serve.model_copy(update={"port": PORT, "app_name": APP}),
            "router": cfg.router.model_copy(update={"placement": "gateway"}),
        }
    )
    serve.start(http_options={"host": "127.0.0.1", "port": PORT})
    try:
        serve.run(build_app(cfg), name=APP, route_prefix="/")
        wait_healthy(URL, 300)
        yield {"cfg": cfg, "registry": registry, "dirs": dirs}
    finally:
        serve.delete(APP)


def _post(body: dict) -> httpx.Response:
    return httpx.post(f"{URL}/v1/completions", json=body, headers=AUTH, timeout=60)


def test_gateway_routes_in_process_without_a_router_deployment(gateway_app):
    from ray import serve

    deployments = set(serve.status().applications[APP].deployments)
    assert "Router" not in deployments and {"Gateway", "Compositor"} <= deployments
    models = httpx.get(f"{URL}/v1/models", headers=AUTH, timeout=60)  # refreshes the table
    assert models.status_code == 200 and "auto" in [m["id"] for m in models.json()["data"]]
    for domain, prompt in PROMPTS.items():
        r = _post({"model": "auto", "prompt": prompt, "max_tokens": 4})
        assert r.status_code == 200, r.text
        q = r.json()["qlp"]
        assert q["adapter"] == domain and q["routed"] is True and q["confidence"] > 0.2
    r = _post({"model": "auto", "prompt": "Bake a chocolate cake for my grandmother"})
    assert r.status_code == 200 and r.json()["qlp"]["fallback"] is True


def test_decisions_equal_the_router_deployment(gateway_app):
    """The same router code in the Router deployment decides the same, to float rounding."""
    from qlp_ray.serve.router import RouterDeployment

    cfg = gateway_app["cfg"]
    local = RouterDeployment(cfg.model_dump(mode="json"))
    for prompt in [*PROMPTS.values(), "Center a div with CSS grid.", "Deploy to Kubernetes"]:
        q = _post({"model": "auto", "prompt": prompt, "max_tokens": 2}).json()["qlp"]
        vec = local.embedder.encode(prompt)
        d = local._router.route(vec)
        assert (q["adapter"], q["fallback"]) == (d.target, d.fallback)
        assert q["confidence"] == pytest.approx(d.confidence, abs=1e-4)


def test_route_many_is_one_batch_with_the_single_text_decisions(gateway_app):
    """``route_many`` (what a gateway's coalesced calls reach) encodes its texts as one
    batch and decides each as routing it alone would, in order."""
    import asyncio

    from qlp_ray.serve.router import RouterDeployment

    local = RouterDeployment(gateway_app["cfg"].model_dump(mode="json"))
    texts = [*PROMPTS.values(), "Center a div with CSS grid.", "Deploy to Kubernetes",
             "Bake a chocolate cake for my grandmother", PROMPTS["dataeng"]]  # fmt: skip
    before = local.batch_stats()
    got = asyncio.run(local.route_many(texts))
    after = local.batch_stats()
    batches, batched = after["batches"] - before["batches"], after["texts"] - before["texts"]
    assert (batches, batched) == (1, len(texts))
    assert len(got) == len(texts) and got[0] == {**got[-1], "route_ms": got[0]["route_ms"]}
    for text, d in zip(texts, got, strict=True):
        alone = local._router.route(local.embedder.encode(text))
        assert (d["target"], d["fallback"]) == (alone.target, alone.fallback)
        assert d["confidence"] == pytest.approx(alone.confidence, abs=1e-4)
        assert d["route_ms"] > 0 and d["mode"] == "centroid" and "version" in d
    assert [d["target"] for d in got[:2]] == list(PROMPTS)  # dataeng, frontend
