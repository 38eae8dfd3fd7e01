"""The Serve app over real HTTP on local Ray: routing, adapters, errors, signatures, API key.

One session: a tiny base model, real PEFT LoRA adapters trained a few steps on domain
text, registered and signed with the real registry, the app deployed on the session's
Serve port (tests/helpers/ray_start.py).
"""

from __future__ import annotations

import copy
import os
import shutil
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch

from tests.helpers.ray_start import SERVE_PORT, SERVE_URL, deployed

pytestmark = pytest.mark.integration

PORT, URL = SERVE_PORT, SERVE_URL
API_KEY = "s3cret"
AUTH = {"authorization": f"Bearer {API_KEY}"}

DOMAIN_TEXT = {
    "dataeng": [
        "Write a SQL query that joins the orders and customers tables and aggregates revenue.",
        "Design an Airflow DAG that loads Parquet files from S3 into the data warehouse.",
        "How do I partition a Spark DataFrame by date before writing it to Parquet?",
        "Build an ETL pipeline that deduplicates rows and upserts them into Postgres.",
        "Explain how to model a star schema with fact and dimension tables.",
        "Optimize a slow SQL GROUP BY over a billion-row table in BigQuery.",
    ],
    "frontend": [
        "Write a React component that renders a sortable table with hooks.",
        "Center a div horizontally and vertically with CSS flexbox.",
        "How do I manage form state in a Vue single-file component?",
        "Make this button accessible with ARIA labels and keyboard focus styles.",
        "Fix the layout shift when images load on the landing page in the browser.",
        "Style a responsive navbar with Tailwind CSS that collapses on mobile.",
    ],
    "devops": [
        "Write a Kubernetes deployment manifest with liveness and readiness probes.",
        "Set up a GitHub Actions pipeline that builds and pushes a Docker image.",
        "Configure Terraform to create an autoscaling group behind a load balancer.",
        "Why does my Docker container restart in a loop? Read the systemd logs.",
    ],
}


def _train_adapter(base, tokenizer, texts: list[str], out: Path, seed: int) -> Path:
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(seed)
    model = get_peft_model(
        copy.deepcopy(base),
        LoraConfig(r=4, lora_alpha=16, target_modules=["q_proj", "v_proj"], lora_dropout=0.0),
    )
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=2e-2)
    batch = tokenizer(texts, return_tensors="pt", padding=True)
    labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
    for _ in range(8):
        loss = model(
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=labels
        ).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
    model.save_pretrained(str(out))
    return out


def build_stack(home: Path):
    """Tiny base + three trained adapters (dataeng, frontend registered; devops not yet)."""
    from qlp_ray.core.config import load_config
    from qlp_ray.models.base import base_model_id, load_base
    from qlp_ray.registry.signing import init_keys
    from qlp_ray.registry.store import Registry
    from qlp_ray.route.centroid import compute_centroid
    from qlp_ray.route.embeddings import get_embedder

    os.environ["HF_HUB_OFFLINE"] = "1"
    overrides = {
        "paths": {"home": str(home)},
        "model": {"tiny": {"pretrain_steps": 10, "hidden_size": 64, "num_layers": 2}},
        "serve": {
            "port": PORT,
            "max_adapters_per_replica": 1,  # every adapter switch exercises LRU eviction
            "max_prompt_chars": 2000,
            "max_tokens_limit": 64,
            "compositor_num_cpus": 0.5,
            "router_num_cpus": 0.25,
            "api_key": API_KEY,
        },
        "router": {"threshold": 0.2, "refresh_interval_s": 2.0},
    }
    cfg = load_config(overrides=overrides, environ={})
    base, tokenizer = load_base(cfg)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    embedder = get_embedder()
    init_keys(cfg.paths.keys)
    registry = Registry(cfg)
    work = home / "adapters"
    dirs = {}
    for seed, domain in enumerate(DOMAIN_TEXT):
        d = _train_adapter(base, tokenizer, DOMAIN_TEXT[domain], work / domain, seed)
        centroid = compute_centroid(embedder.encode(DOMAIN_TEXT[domain])).tolist()
        dirs[domain] = (d, centroid)
    for domain in ("dataeng", "frontend"):  # devops is registered after deploy
        d, centroid = dirs[domain]
        registry.register(d, adapter_id=domain, domain=domain, base_model=base_model_id(cfg),
                          metadata={"centroid": centroid})  # fmt: skip
    return cfg, registry, dirs


@pytest.fixture(scope="module")
def stack(tmp_path_factory, ray_local):
    from ray import serve

    cfg, registry, dirs = build_stack(tmp_path_factory.mktemp("qlp_home"))
    with deployed(cfg) as url:
        assert url == URL
        compositor = serve.get_deployment_handle("Compositor", app_name=cfg.serve.app_name)
        yield {"cfg": cfg, "registry": registry, "dirs": dirs, "compositor": compositor}


def _post(path: str, body, headers=AUTH) -> httpx.Response:
    return httpx.post(URL + path, json=body, timeout=60, headers=headers)


def _get(path: str, headers=AUTH) -> httpx.Response:
    return httpx.get(URL + path, timeout=60, headers=headers)


def _assert_openai_error(r: httpx.Response, status: int, code: str | None = None) -> dict:
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert "Traceback" not in err["message"] and "/tmp" not in err["message"]
    if code:
        assert err["code"] == code
    assert r.headers.get("x-request-id")
    return err


def test_health_and_models(stack):
    assert _get("/health", headers=None).json()["status"] == "ok"
    r = _get("/v1/models")
    assert r.status_code == 200
    body = r.json()
    ids = [m["id"] for m in body["data"]]
    assert body["object"] == "list"
    assert {"auto", "dataeng", "frontend"} <= set(ids)
    adapters = {m["id"]: m for m in body["data"] if m["kind"] == "adapter"}
    assert adapters["dataeng"]["domain"] == "dataeng" and adapters["dataeng"]["signed"] is True


def test_auto_routes_domain_prompts_to_their_adapter(stack):
    cases = {
        "dataeng": "Write a SQL query to load yesterday's Parquet partition into the warehouse.",
        "frontend": "My React component re-renders too often; how do I memoize it with hooks?",
    }
    for domain, prompt in cases.items():
        r = _post("/v1/completions", {"model": "auto", "prompt": prompt, "max_tokens": 8})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["object"] == "text_completion"
        assert body["qlp"]["adapter"] == domain and body["qlp"]["routed"] is True
        assert body["qlp"]["fallback"] is False and body["qlp"]["confidence"] > 0.2
        assert r.headers["x-qlp-adapter"] == domain
        assert body["model"] == domain
        usage = body["usage"]
        assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
        assert 1 <= usage["completion_tokens"] <= 8
        assert body["choices"][0]["finish_reason"] in {"stop", "length"}


def test_explicit_adapter_chat_and_base_fallback(stack):
    msgs = [{"role": "user", "content": "Center a div with CSS grid."}]
    r = _post("/v1/chat/completions", {"model": "frontend", "messages": msgs, "max_tokens": 6})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["object"] == "chat.completion" and body["qlp"]["routed"] is False
    assert body["choices"][0]["message"]["role"] == "assistant"
    assert r.headers["x-qlp-adapter"] == "frontend"
    # off-domain text scores < 0.1 against every centroid -> routed to the base model
    body = {"model": "auto", "prompt": ["Bake a chocolate cake for my grandmother"]}
    r = _post("/v1/completions", {**body, "max_tokens": 4})  # a 1-element prompt list is fine
    assert r.status_code == 200, r.text
    q = r.json()["qlp"]
    assert q["confidence"] < 0.2 and q["fallback"] is True and q["adapter"] is None
    assert r.headers["x-qlp-adapter"] == "base" and r.json()["model"].startswith("builtin:")
    # the base model by its id: no adapter, not routed
    base_id = r.json()["model"]
    r = _post("/v1/completions", {"model": base_id, "prompt": "hello", "max_tokens": 2})
    assert r.status_code == 200 and r.json()["qlp"]["routed"] is False
    assert r.headers["x-qlp-adapter"] == "base"


def test_lru_eviction_frees_the_peft_adapter(stack):
    for model in ("dataeng", "frontend"):
        r = _post("/v1/completions", {"model": model, "prompt": "hello", "max_tokens": 2})
        assert r.status_code == 200, r.text
    stats = stack["compositor"].stats.remote().result()
    # LRU size 1: only the last adapter is still in the backend and in PEFT
    assert len(stats["backend_adapters"]) == 1 and stats["backend_adapters"][0].startswith(
        "frontend"
    )
    assert stats["peft_adapters"] == stats["backend_adapters"]
    assert stats["loads"] >= 2


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"prompt": "hi"}, "model"),
        ({"model": "auto"}, "prompt"),
        ({"model": "auto", "prompt": 42}, "prompt"),
        ({"model": "auto", "prompt": "hi", "max_tokens": "5"}, "max_tokens"),
        ({"model": "auto", "prompt": "hi", "max_tokens": 0}, "max_tokens"),
        ({"model": "auto", "prompt": "hi", "max_tokens": 65}, "max_tokens"),
        ({"model": "auto", "prompt": "x" * 2001}, "prompt"),
        ({"model": "auto", "prompt": "hi", "n": 2}, "n"),
        ({"model": "auto", "prompt": "hi", "stream": True}, "stream"),
        ({"model": "auto", "prompt": "hi", "temperature": 3}, "temperature"),
    ],
)
def test_bad_requests_are_400_in_openai_shape(stack, body, param):
    err = _assert_openai_error(_post("/v1/completions", body), 400)
    assert err["param"] == param and err["type"] == "invalid_request_error"


def test_malformed_json_unknown_model_and_route(stack):
    r = httpx.post(URL + "/v1/completions", content=b'{"model": "auto", "prompt": ',
                   headers={"content-type": "application/json", **AUTH})  # fmt: skip
    assert "JSON" in _assert_openai_error(r, 400)["message"]
    err = _assert_openai_error(
        _post("/v1/completions", {"model": "nope", "prompt": "hi"}), 404, "model_not_found"
    )
    assert "nope" in err["message"] and err["param"] == "model"
    _assert_openai_error(_get("/v1/nothing"), 404)


def test_late_adapter_then_tampered_gets_424_others_still_work(stack):
    registry, cfg = stack["registry"], stack["cfg"]
    from qlp_ray.models.base import base_model_id

    d, centroid = stack["dirs"]["devops"]
    record = registry.register(
        d,
        adapter_id="devops",
        domain="devops",
        base_model=base_model_id(cfg),
        metadata={"centroid": centroid},
    )
    ids = [m["id"] for m in _get("/v1/models").json()["data"]]
    assert "devops" in ids  # registered after deploy, listed without a restart
    prompt = "Write a Kubernetes manifest and a Docker build step for the CI pipeline."
    r = _post("/v1/completions", {"model": "auto", "prompt": prompt, "max_tokens": 4})
    assert r.status_code == 200 and r.json()["qlp"]["adapter"] == "devops", r.text
    # evict devops (LRU size 1), then tamper with its files on disk
    assert _post(
        "/v1/completions", {"model": "dataeng", "prompt": "hi", "max_tokens": 2}
    ).is_success
    weights = Path(record.path) / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-8] + b"\x00" * 8)
    err = _assert_openai_error(
        _post("/v1/completions", {"model": "devops", "prompt": "hi", "max_tokens": 2}), 424
    )
    assert err["type"] == "adapter_error"
    r = _post("/v1/completions", {"model": "dataeng", "prompt": "hi", "max_tokens": 2})
    assert r.status_code == 200 and r.json()["qlp"]["adapter"] == "dataeng"
    shutil.rmtree(Path(record.path).parent)  # unregister so later tests see two adapters


def test_api_key_enforced_and_python_client(stack):
    from qlp_ray.client import Client
    from qlp_ray.core.errors import AdapterNotFound, AuthenticationError, InvalidRequest

    assert _get("/health", headers=None).status_code == 200
    _assert_openai_error(_get("/v1/models", headers=None), 401, "invalid_api_key")
    # the key is checked before the body is validated
    r = _post("/v1/completions", {"oops": 1}, headers={"authorization": "Bearer wrong"})
    _assert_openai_error(r, 401, "invalid_api_key")
    with pytest.raises(AuthenticationError):
        Client(URL, api_key="wrong").models()
    with Client(URL, api_key=API_KEY, timeout=60) as client:
        assert client.health()["status"] == "ok"
        assert {"auto", "dataeng", "frontend"} <= {m.id for m in client.models().data}
        r = client.complete("Write a SQL query joining orders and customers", max_tokens=4)
        assert r.qlp.adapter == "dataeng" and r.usage.completion_tokens >= 1
        chat = client.chat([{"role": "user", "content": "Style a navbar with CSS"}],
                           model="frontend", max_tokens=3)  # fmt: skip
        assert chat.qlp.adapter == "frontend" and chat.qlp.routed is False
        with pytest.raises(AdapterNotFound):
            client.complete("hi", model="missing-adapter")
        with pytest.raises(InvalidRequest, match="max_tokens"):
            client.complete("hi", max_tokens=10_000)


def test_router_scores_are_cosines(stack):
    r = _post("/v1/completions", {"model": "auto", "prompt": "SQL join on orders", "max_tokens": 1})
    assert r.status_code == 200
    assert -1.0 <= r.json()["qlp"]["confidence"] <= 1.0
    assert np.isfinite(r.json()["qlp"]["latency_ms"])
