"""Router at run time over real HTTP on local Ray Serve (the session's port): external fallback,
top-k stacks, and a routing table that follows register / retire / promote at once.

Adapters: the trained tiny-model LoRAs of test_serve_http (reused), signed in a real
registry. The external endpoint is a local OpenAI-compatible test double on port 8181.
``router.refresh_interval_s`` is an hour, so every change below is picked up through the
registry's generation marker, not the periodic refresh.
"""

from __future__ import annotations

import os
from pathlib import Path

import httpx
import pytest

from tests.helpers.openai_double import ANSWER, OpenAIDouble
from tests.helpers.ray_start import SERVE_PORT, SERVE_URL, deployed
from tests.serve.test_serve_http import DOMAIN_TEXT, _train_adapter

pytestmark = pytest.mark.integration

PORT, URL, EXTERNAL_PORT = SERVE_PORT, SERVE_URL, 8181
EXTERNAL_KEY = "sk-ext-fallback-key"
EXTERNAL_MODEL = "gpt-4o-mini"
THRESHOLD = 0.2

OFF_DOMAIN = "Bake a chocolate cake for my grandmother"
DEVOPS = "Write a Kubernetes manifest and a Docker build step for the CI pipeline."
DATAENG = "Write a SQL query to load yesterday's Parquet partition into the warehouse."
# MiniLM cosines to the centroids: frontend 0.307, dataeng 0.295 (share 0.96 >= 0.9)
BETWEEN = "Render the Parquet ETL pipeline metrics in a React table component with CSS styling."


def _build(home: Path, upstream: OpenAIDouble):
    from qlp_ray.core.config import load_config
    from qlp_ray.models.base import base_model_id, load_base
    from qlp_ray.registry.signing import init_keys
    from qlp_ray.registry.store import Registry
    from qlp_ray.route.centroid import compute_centroid
    from qlp_ray.route.embeddings import get_embedder

    os.environ["HF_HUB_OFFLINE"] = "1"
    cfg = load_config(
        overrides={
            "paths": {"home": str(home)},
            "model": {"tiny": {"pretrain_steps": 10, "hidden_size": 64, "num_layers": 2}},
            "serve": {"port": PORT, "app_name": "qlp_fallback", "max_tokens_limit": 64,
                      "compositor_num_cpus": 0.5, "router_num_cpus": 0.25,
                      "max_adapters_per_replica": 4,
                      "insecure_open_admin": True},  # admin routes without a key (loopback)
            "router": {
                "threshold": THRESHOLD, "refresh_interval_s": 3600.0, "generation_poll_s": 0.0,
                "top_k": 2, "stack_min_share": 0.9, "fallback": "external",
                "external": {"url": upstream.url, "model": EXTERNAL_MODEL,
                             "api_key": EXTERNAL_KEY, "timeout_s": 3.0},
            },
        },
        environ={},
    )  # fmt: skip
    base, tokenizer = load_base(cfg)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    embedder = get_embedder()
    init_keys(cfg.paths.keys)
    registry = Registry(cfg)
    base_id = base_model_id(cfg)
    sources = {}
    for seed, domain in enumerate(DOMAIN_TEXT):
        d = _train_adapter(base, tokenizer, DOMAIN_TEXT[domain], home / "src" / domain, seed)
        centroid = compute_centroid(embedder.encode(DOMAIN_TEXT[domain])).tolist()
        sources[domain] = {"src_dir": d, "adapter_id": domain, "domain": domain,
                           "base_model": base_id, "metadata": {"centroid": centroid}}  # fmt: skip
    for domain in ("dataeng", "frontend"):
        registry.register(**sources[domain])
    return cfg, registry, sources


@pytest.fixture(scope="module")
def served(tmp_path_factory, ray_local):
    with OpenAIDouble(EXTERNAL_PORT, model=EXTERNAL_MODEL) as upstream:
        cfg, registry, sources = _build(tmp_path_factory.mktemp("qlp_home"), upstream)
        with deployed(cfg) as url:
            assert url == URL
            yield {"cfg": cfg, "registry": registry, "sources": sources, "upstream": upstream}


def _auto(prompt: str, chat: bool = False) -> httpx.Response:
    if chat:
        body = {"model": "auto", "messages": [{"role": "user", "content": prompt}]}
        return httpx.post(f"{URL}/v1/chat/completions", json={**body, "max_tokens": 4}, timeout=60)
    body = {"model": "auto", "prompt": prompt, "max_tokens": 4}
    return httpx.post(f"{URL}/v1/completions", json=body, timeout=60)


def _served_by(prompt: str) -> dict:
    r = _auto(prompt)
    assert r.status_code == 200, r.text
    return {**r.json()["qlp"], "header": r.headers["x-qlp-adapter"], "model": r.json()["model"]}


def test_low_confidence_goes_to_the_external_endpoint(served):
    upstream = served["upstream"]
    upstream.requests.clear()
    for chat in (False, True):
        r = _auto(OFF_DOMAIN, chat=chat)
        assert r.status_code == 200, r.text
        body = r.json()
        q = body["qlp"]
        assert q["fallback"] is True and q["adapter"] is None and q["external"] == EXTERNAL_MODEL
        assert q["confidence"] < THRESHOLD and q["routed"] is True
        assert r.headers["x-qlp-adapter"] == f"external:{EXTERNAL_MODEL}"
        assert body["model"] == EXTERNAL_MODEL
        text = body["choices"][0]["message"]["content"] if chat else body["choices"][0]["text"]
        assert text == ANSWER and body["usage"]["total_tokens"] == 20
    paths = [req["path"] for req in upstream.requests]
    assert paths == ["/v1/completions", "/v1/chat/completions"]
    assert all(req["headers"]["authorization"] == f"Bearer {EXTERNAL_KEY}"
               for req in upstream.requests)  # fmt: skip
    assert upstream.requests[0]["json"]["prompt"] == OFF_DOMAIN
    assert upstream.requests[1]["json"]["messages"][-1]["content"] == OFF_DOMAIN
    # priced as the external model: its cost, and savings against gpt-4o, in the ledger
    cost = httpx.get(f"{URL}/v1/admin/analytics", timeout=30).json()["cost"]["by_model"]
    ext = cost[EXTERNAL_MODEL]
    assert ext["requests"] == 2 and ext["prompt_tokens"] == 22 and ext["completion_tokens"] == 18
    assert ext["cost_usd"] == pytest.approx((22 * 0.15 + 18 * 0.60) / 1e6)


def test_external_errors_are_502_504_and_429_in_openai_shape(served):
    upstream = served["upstream"]
    try:
        upstream.mode = "error"
        r = _auto(OFF_DOMAIN)
        assert r.status_code == 502, r.text
        err = r.json()["error"]
        assert err["code"] == "external_endpoint_error" and upstream.url in err["message"]
        assert EXTERNAL_KEY not in r.text
        upstream.mode, upstream.delay_s = "slow", 4.0  # over router.external.timeout_s=3
        r = _auto(OFF_DOMAIN)
        assert r.status_code == 504 and r.json()["error"]["code"] == "external_endpoint_timeout"
        upstream.mode = "busy"  # the vendor rate-limits us: a 429 to back off, not a 502
        r = _auto(OFF_DOMAIN)
        assert r.status_code == 429 and r.headers["retry-after"] == "7", r.text
        assert r.json()["error"]["code"] == "rate_limit_exceeded"
    finally:
        upstream.mode = "ok"
    assert _served_by(DATAENG)["adapter"] == "dataeng"  # adapters unaffected


def test_top_k_routes_a_request_between_domains_to_a_stack(served):
    q = _served_by(BETWEEN)
    assert q["adapter"] == "frontend@1:0.5+dataeng@1:0.5", q
    assert q["header"] == q["adapter"] and q["fallback"] is False and q["external"] is None
    assert q["domain"] == "frontend" and q["confidence"] >= THRESHOLD
    single = _served_by(DATAENG)  # a clear single-domain request stays single
    assert single["adapter"] == "dataeng" and single["version"] == 1


def test_routed_requests_join_the_experiment_of_their_domain(served):
    """model=auto: the router picks frontend, then the frontend experiment picks a variant."""
    stack = "frontend@1:0.5+dataeng@1:0.5"
    spec = {"id": "routed-ab", "applies_to": ["frontend"], "strategy": "sticky",
            "variants": [{"name": "single", "target": "frontend"},
                         {"name": "stacked", "target": stack}]}  # fmt: skip
    r = httpx.post(f"{URL}/v1/admin/experiments", json=spec, timeout=30)
    assert r.status_code == 201, r.text
    prompt = DOMAIN_TEXT["frontend"][0]
    try:
        seen = {}
        for i in range(10):
            body = {"model": "auto", "prompt": prompt, "max_tokens": 2, "user": f"u{i}"}
            r = httpx.post(f"{URL}/v1/completions", json=body, timeout=60)
            assert r.status_code == 200, r.text
            q = r.json()["qlp"]
            assert q["routed"] is True and q["domain"] == "frontend", q
            assert q["experiment"] == "routed-ab" and q["variant"] in ("single", "stacked"), q
            seen[q["variant"]] = (q["adapter"], r.headers["x-qlp-adapter"])
        assert seen == {"single": ("frontend", "frontend"), "stacked": (stack, stack)}, seen
        q = _served_by(DATAENG)  # routed elsewhere: not in the frontend experiment
        assert q["adapter"] == "dataeng" and q["experiment"] is None
    finally:
        httpx.post(f"{URL}/v1/admin/experiments/routed-ab/stop", timeout=30)
    analysis = httpx.get(f"{URL}/v1/admin/experiments/routed-ab", timeout=30).json()
    assert sum(v["impressions"] for v in analysis["variants"]) == 10


def test_routing_table_follows_register_retire_and_promote_without_restart(served):
    registry, sources = served["registry"], served["sources"]
    assert _served_by(DEVOPS)["external"] == EXTERNAL_MODEL  # no devops adapter yet
    registry.register(**sources["devops"])  # while Serve runs
    q = _served_by(DEVOPS)
    assert q["adapter"] == "devops" and q["version"] == 1 and q["confidence"] > 0.5
    table = httpx.get(f"{URL}/v1/admin/routes", timeout=30).json()
    assert set(table["adapters"]) == {"dataeng", "frontend", "devops"}
    assert table["fallback_target"] == {"kind": "external", "model": EXTERNAL_MODEL,
                                        "endpoint": served["upstream"].url}  # fmt: skip
    assert table["top_k"] == 2 and EXTERNAL_KEY not in str(table)

    registry.retire("devops", reason="test")
    q = _served_by(DEVOPS)
    assert q["adapter"] is None and q["external"] == EXTERNAL_MODEL
    models = httpx.get(f"{URL}/v1/models", timeout=30).json()["data"]
    assert "devops" not in {m["id"] for m in models}

    registry.register(**{**sources["dataeng"], "make_current": False})  # v2, a candidate
    assert _served_by(DATAENG)["version"] == 1
    registry.set_current("dataeng", 2, reason="promote in test")
    q = _served_by(DATAENG)
    assert q["adapter"] == "dataeng" and q["version"] == 2

    r = httpx.post(f"{URL}/v1/admin/routes/refresh", timeout=30)
    assert r.status_code == 200
    table = r.json()
    assert table["adapters"] == {"dataeng": {"domain": "dataeng", "version": 2},
                                 "frontend": {"domain": "frontend", "version": 1}}  # fmt: skip
    assert table["generation"] == registry.generation()


def _sse_chunks(body: dict, path: str = "/v1/completions") -> list:
    import json

    r = httpx.post(f"{URL}{path}", json={**body, "stream": True}, timeout=60)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    events = [e.removeprefix("data: ") for e in r.text.split("\n\n") if e]
    assert events[-1] == "[DONE]"
    return [json.loads(e) for e in events[:-1]]


def test_streams_through_the_external_fallback_and_a_routed_stack(served):
    # the external endpoint answers whole: its text is one chunk, then usage
    msgs = [{"role": "user", "content": OFF_DOMAIN}]
    usage_on = {"stream_options": {"include_usage": True}}
    chunks = _sse_chunks(
        {"model": "auto", "messages": msgs, "max_tokens": 4, **usage_on}, "/v1/chat/completions"
    )
    role, text, usage = chunks
    assert role["choices"][0]["delta"]["role"] == "assistant"
    assert text["choices"][0]["delta"]["content"] == ANSWER
    assert text["choices"][0]["finish_reason"] is not None
    assert usage["usage"]["total_tokens"] == 20 and usage["qlp"]["external"] == EXTERNAL_MODEL
    # a request routed to a stack streams what it gets unstreamed
    body = {"model": "auto", "prompt": BETWEEN, "max_tokens": 8}
    whole = httpx.post(f"{URL}/v1/completions", json=body, timeout=60).json()
    assert "+" in whole["qlp"]["adapter"]  # the top-k stack
    chunks = _sse_chunks(body)
    assert "".join(c["choices"][0]["text"] for c in chunks) == whole["choices"][0]["text"]
    assert chunks[-1]["qlp"]["adapter"] == whole["qlp"]["adapter"]
