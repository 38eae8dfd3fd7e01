"""The Serve app over real HTTP on local Ray: recording (store rows, feedback, label queue,
analytics), routing, adapters, errors, signatures, API key, streaming.

One session: a tiny base model, real PEFT LoRA adapters trained a few steps on domain
text, registered and signed with the real registry, the app deployed on the session's
Serve port (tests/helpers/ray_start.py).
"""

from __future__ import annotations

import copy
import os
import shutil
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch

from tests.helpers.ray_start import SERVE_PORT, SERVE_URL, deployed
from tests.helpers.request_log import committed_request

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
            "max_tokens_limit": 240,  # < the tiny model's context (256): long rows fit
            "compositor_num_cpus": 0.5,
            "router_num_cpus": 0.25,
            "api_key": API_KEY,
            # admin routes with the user key: the explicit loopback development opt-out
            "insecure_open_admin": True,
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


# --- Recording: store rows, feedback, label queue, analytics (first: the store starts empty)


@pytest.fixture(scope="module")
def gw(stack):
    from qlp_ray.store.database import FeedbackStore

    store = FeedbackStore.from_config(stack["cfg"], environ={})
    yield {"cfg": stack["cfg"], "store": store}
    store.close()


def _error(r: httpx.Response, status: int) -> dict:
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert "Traceback" not in err["message"]
    return err


def test_requests_recorded_feedback_analytics_label_queue(gw):
    store = gw["store"]
    sent = [
        _post("/v1/completions", {"model": "dataeng", "prompt": "Write a SQL join", "max_tokens": 4,
                                  "user": "alice"}),
        _post("/v1/chat/completions", {"model": "auto", "max_tokens": 4, "messages": [
            {"role": "user", "content": "Write a React component with hooks"}]}),
        _post("/v1/completions", {"model": "frontend", "prompt": "Center a div", "max_tokens": 4}),
    ]  # fmt: skip
    for r in sent:
        assert r.status_code == 200, r.text
    ids = [r.json()["qlp"]["request_id"] for r in sent]
    assert len(set(ids)) == 3

    rows = {rid: committed_request(store, rid) for rid in ids}  # opened directly: committed
    first = rows[ids[0]]
    assert first.adapter_id == "dataeng" and first.prompt == "Write a SQL join"
    assert first.user_id == "alice" and first.latency_ms > 0
    assert first.response == sent[0].json()["choices"][0]["text"]
    assert first.completion_tokens == sent[0].json()["usage"]["completion_tokens"]
    routed = rows[ids[1]]
    assert routed.routing is not None and routed.routing["confidence"] is not None
    assert routed.adapter_id == sent[1].json()["qlp"]["adapter"]

    r = _post("/v1/feedback", {"request_id": ids[0], "kind": "rating", "value": 4})
    assert r.status_code == 200, r.text
    fb = store.query_feedback(request_id=ids[0])
    assert [(f.kind, f.value) for f in fb] == [("rating", 4.0)]
    # the row and its feedback name the key that sent them (serve.api_key = "cfg-user")
    assert first.caller == "cfg-user" and fb[0].caller == "cfg-user" and fb[0].trusted

    assert _error(_post("/v1/feedback", {"request_id": "nope", "kind": "thumbs", "value": 1}),
                  404)  # fmt: skip
    _error(_post("/v1/feedback", {"request_id": ids[0], "kind": "rating", "value": 7}), 400)
    bad = httpx.post(URL + "/v1/feedback", content=b"{not json", timeout=30,
                     headers={**AUTH, "content-type": "application/json"})  # fmt: skip
    _error(bad, 400)
    assert len(store.query_feedback(request_id=ids[0])) == 1  # bad feedback stored nothing

    stats = httpx.get(URL + "/v1/admin/analytics", headers=AUTH, timeout=30).json()
    by_adapter = stats["adapters"]
    assert by_adapter["dataeng"]["requests"] >= 1
    total = sum(a["requests"] for a in by_adapter.values())
    assert total == stats["cost"]["total"]["requests"] == 3
    assert stats["store_errors"] == 0

    q = httpx.get(URL + "/v1/admin/label-queue?k=2", headers=AUTH, timeout=60)
    assert q.status_code == 200, q.text
    assert q.json()["object"] == "list" and len(q.json()["data"]) <= 2


def test_official_openai_client(gw):
    from openai import OpenAI

    client = OpenAI(base_url=URL + "/v1", api_key=API_KEY)
    comp = client.completions.create(model="auto", prompt="Write a SQL join", max_tokens=4)
    assert comp.choices[0].text is not None and comp.usage.completion_tokens >= 0
    chat = client.chat.completions.create(
        model="frontend", max_tokens=4, messages=[{"role": "user", "content": "Center a div"}]
    )
    assert chat.model == "frontend" and chat.choices[0].message.role == "assistant"
    rid = chat.model_extra["qlp"]["request_id"]
    assert committed_request(gw["store"], rid).adapter_id == "frontend"


def test_store_failure_never_fails_the_request(gw):
    """The store refuses one request's row (a trigger injects the failure): the request
    still answers 200, the failure is counted, and other rows are stored. Two callers
    sending the same x-request-id get two requests (the id is the server's)."""
    from sqlalchemy import text

    engine = gw["store"].engine
    with engine.begin() as conn:
        conn.execute(text(
            "CREATE TRIGGER qlp_test_fail BEFORE INSERT ON requests "
            "WHEN NEW.prompt = 'store must fail' BEGIN SELECT RAISE(ABORT, 'injected'); END"
        ))  # fmt: skip
    try:
        headers = {**AUTH, "x-request-id": "dup-request-id-1"}
        before = httpx.get(URL + "/v1/admin/analytics", headers=AUTH, timeout=30).json()
        answers = [httpx.post(URL + "/v1/completions", headers=headers, timeout=60, json={
            "model": "dataeng", "prompt": prompt, "max_tokens": 4})
            for prompt in ("store must fail", "Write a SQL join")]  # fmt: skip
        assert [r.status_code for r in answers] == [200, 200]
        ids = [r.json()["qlp"]["request_id"] for r in answers]
        assert len(set(ids)) == 2 and "dup-request-id-1" not in ids
        assert [r.headers["x-qlp-request-id"] for r in answers] == ids
        assert committed_request(gw["store"], ids[1]).prompt == "Write a SQL join"
        after = httpx.get(URL + "/v1/admin/analytics", headers=AUTH, timeout=30).json()
        assert after["store_errors"] == before["store_errors"] + 1
        assert after["cost"]["total"]["requests"] == before["cost"]["total"]["requests"] + 2
    finally:
        with engine.begin() as conn:
            conn.execute(text("DROP TRIGGER qlp_test_fail"))


def test_feedback_right_after_the_reply_finds_its_request(gw):
    """Durable acknowledgements (the default): the reply goes out after its row's group
    commit, so the row is readable at once and feedback sent right away finds it (with
    ``background`` the feedback route waits for a row still queued in its replica; that wait
    is tested with a held-up writer in tests/serve/test_request_log.py)."""
    for i in range(10):
        r = _post("/v1/completions", {"model": "frontend", "prompt": f"Center div {i}",
                                      "max_tokens": 2})  # fmt: skip
        assert r.status_code == 200, r.text
        rid = r.json()["qlp"]["request_id"]
        assert r.headers["x-qlp-recorded"] == "committed"
        assert gw["store"].get_request(rid).id == rid  # no wait: committed before the reply
        fb = _post("/v1/feedback", {"request_id": rid, "kind": "thumbs", "value": 1})
        assert fb.status_code == 200, fb.text
        assert [f.kind for f in gw["store"].query_feedback(request_id=rid)] == ["thumbs"]
    log = httpx.get(URL + "/v1/admin/analytics", headers=AUTH, timeout=30).json()["request_log"]
    assert log["pending"] == 0 and log["written"] >= 10 and log["batches"] >= 1


# --- Routing, adapters, errors, signatures


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
        ({"model": "auto", "prompt": "hi", "max_tokens": 241}, "max_tokens"),
        ({"model": "auto", "prompt": "x" * 2001}, "prompt"),
        ({"model": "auto", "prompt": "hi", "n": 9}, "n"),
        ({"model": "auto", "prompt": "hi", "stream": "yes"}, "stream"),
        ({"model": "auto", "prompt": "hi", "presence_penalty": 0.5}, "presence_penalty"),
        ({"model": "auto", "prompt": "hi", "max_completion_tokens": 241}, "max_completion_tokens"),
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


# -- streaming and the OpenAI surface, through the official `openai` client ------------
def _openai():
    import openai

    return openai.OpenAI(base_url=URL + "/v1", api_key=API_KEY, max_retries=0, timeout=60)


def _until(condition, timeout_s: float = 20.0):
    """Wait for ``condition()`` to be truthy (polled), then return it."""
    deadline = time.monotonic() + timeout_s
    while not (value := condition()):
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)
    return value


@pytest.mark.parametrize("model", ["dataeng", "base"])
def test_openai_client_streams_what_it_gets_unstreamed(stack, model):
    client = _openai()
    if model == "base":
        model = _get("/health", headers=None).json()["base_model"]
    prompt = "Write a SQL query that joins orders and customers"
    whole = client.completions.create(model=model, prompt=prompt, max_tokens=12, temperature=0)
    chunks = list(
        client.completions.create(model=model, prompt=prompt, max_tokens=12, temperature=0,
                                  stream=True, stream_options={"include_usage": True})
    )  # fmt: skip
    *texts, usage_chunk = chunks
    assert "".join(c.choices[0].text for c in texts) == whole.choices[0].text
    assert texts[-1].choices[0].finish_reason == whole.choices[0].finish_reason
    assert usage_chunk.choices == [] and usage_chunk.usage == whole.usage
    assert whole.usage.completion_tokens >= 1
    if whole.usage.completion_tokens >= 3:  # tokens flowed one by one, not as one block
        assert sum(1 for c in texts if c.choices[0].text) >= 2
    assert usage_chunk.model_extra["qlp"]["adapter"] == whole.model_extra["qlp"]["adapter"]

    msgs = [{"role": "user", "content": "Center a div with CSS grid"}]
    chat = client.chat.completions.create(model=model, messages=msgs, max_tokens=10)
    stream = client.chat.completions.create(
        model=model, messages=msgs, max_tokens=10, stream=True,
        stream_options={"include_usage": True},
    )  # fmt: skip
    parts, usage = [], None
    for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
        for choice in chunk.choices:
            parts.append(choice.delta.content or "")
    assert chunks[0].id.startswith("cmpl-") and chunk.id.startswith("chatcmpl-")
    assert "".join(parts) == chat.choices[0].message.content
    assert (
        usage == chat.usage and usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    )


def test_n_choices_stop_and_max_completion_tokens(stack):
    client = _openai()
    prompt = "Design an Airflow DAG that loads Parquet files"
    two = client.completions.create(model="dataeng", prompt=prompt, max_tokens=10, n=2)
    assert [c.index for c in two.choices] == [0, 1]
    assert two.choices[0].text == two.choices[1].text  # greedy: the same generation twice
    single = client.completions.create(model="dataeng", prompt=prompt, max_tokens=10)
    assert two.usage.prompt_tokens == single.usage.prompt_tokens
    assert two.usage.completion_tokens == 2 * single.usage.completion_tokens
    # sampled choices are independent samples, reproducible with a seed
    sampled = dict(model="dataeng", prompt=prompt, max_tokens=8, n=2, temperature=1.0, seed=11)
    again = [c.text for c in client.completions.create(**sampled).choices]
    assert again == [c.text for c in client.completions.create(**sampled).choices]
    # stop: the text ends before it, finish_reason "stop", streamed or not
    text = single.choices[0].text
    cut = text.strip()[len(text.strip()) // 2 :][:3]
    if cut:
        stopped = client.completions.create(model="dataeng", prompt=prompt, max_tokens=10,
                                            stop=[cut])  # fmt: skip
        assert stopped.choices[0].text == text[: text.index(cut)]
        assert stopped.choices[0].finish_reason == "stop"
        streamed = client.completions.create(model="dataeng", prompt=prompt, max_tokens=10,
                                             stop=cut, stream=True)  # fmt: skip
        pieces = [(c.choices[0].text, c.choices[0].finish_reason) for c in streamed]
        assert "".join(p for p, _ in pieces) == stopped.choices[0].text
        assert pieces[-1][1] == "stop"
    # max_completion_tokens bounds the tokens like max_tokens (the smaller wins)
    short = client.chat.completions.create(
        model="dataeng", messages=[{"role": "user", "content": prompt}],
        max_tokens=10, max_completion_tokens=2,
    )  # fmt: skip
    assert short.usage.completion_tokens <= 2
    # streamed n: each choice's chunks carry its index
    streamed = client.completions.create(model="dataeng", prompt=prompt, max_tokens=6, n=2,
                                         stream=True)  # fmt: skip
    by_index = {0: "", 1: ""}
    for chunk in streamed:
        for choice in chunk.choices:
            by_index[choice.index] += choice.text
    assert by_index[0] == by_index[1] == client.completions.create(
        model="dataeng", prompt=prompt, max_tokens=6).choices[0].text  # fmt: skip


def test_logprobs_in_the_openai_shapes(stack):
    """The transformers backend's token log-probabilities, as OpenAI's clients read them;
    the text is the one the same request gets without them."""
    client = _openai()
    prompt = "how do i partition a table"
    plain = client.completions.create(model="dataeng", prompt=prompt, max_tokens=5)
    got = client.completions.create(model="dataeng", prompt=prompt, max_tokens=5, logprobs=3)
    choice = got.choices[0]
    assert choice.text == plain.choices[0].text and plain.choices[0].logprobs is None
    lp = choice.logprobs
    k = got.usage.completion_tokens
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == k > 0
    assert lp.text_offset[0] == 0 and lp.text_offset == sorted(lp.text_offset)
    for chosen, top in zip(lp.token_logprobs, lp.top_logprobs, strict=True):
        assert chosen <= 0.0 and 1 <= len(top) <= 3
        assert max(top.values()) == pytest.approx(chosen, abs=1e-5)  # greedy: the top one
    chat = client.chat.completions.create(
        model="dataeng", messages=[{"role": "user", "content": prompt}], max_tokens=4,
        logprobs=True, top_logprobs=2,
    )  # fmt: skip
    content = chat.choices[0].logprobs.content
    assert len(content) == chat.usage.completion_tokens
    for entry in content:
        assert entry.bytes == list(entry.token.encode("utf-8"))
        values = [t.logprob for t in entry.top_logprobs]
        assert len(values) == 2 and values == sorted(values, reverse=True)
        assert values[0] == pytest.approx(entry.logprob, abs=1e-5)
    bare = client.chat.completions.create(
        model="dataeng", messages=[{"role": "user", "content": prompt}], max_tokens=2
    )
    assert bare.choices[0].logprobs is None


def test_model_retrieve_and_refusals_in_openai_shape(stack):
    import openai

    client = _openai()
    card = client.models.retrieve("dataeng")
    assert card.id == "dataeng" and card.model_extra["domain"] == "dataeng"
    assert client.models.retrieve("dataeng@1").model_extra["version"] == 1
    assert client.models.retrieve("auto").model_extra["kind"] == "router"
    with pytest.raises(openai.NotFoundError) as info:
        client.models.retrieve("nope")
    assert info.value.body["code"] == "model_not_found"
    _assert_openai_error(_get("/v1/models/dataeng@99"), 404)
    # errors before the first byte of a stream are plain JSON errors
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="nope", prompt="hi", stream=True)
    # ... also when the compositor refuses it (prompt + max_tokens over the model's context)
    with pytest.raises(openai.BadRequestError, match="context length"):
        client.completions.create(model="dataeng", prompt="word " * 300, max_tokens=100,
                                  stream=True)  # fmt: skip
    with pytest.raises(openai.BadRequestError, match="logprobs are not available with stream"):
        client.completions.create(model="dataeng", prompt="hi", logprobs=1, stream=True)
    with pytest.raises(openai.BadRequestError, match="unknown field `foo`"):
        client.completions.create(model="dataeng", prompt="hi", extra_body={"foo": 1})
    spec = _get("/openapi.json").json()["components"]["schemas"]["CompletionRequest"]
    assert spec["additionalProperties"] is False
    assert {"type": "integer", "minimum": 1, "maximum": 240} in spec["properties"]["max_tokens"][
        "anyOf"
    ]


def test_a_client_that_disconnects_frees_its_slot(stack):
    compositor = stack["compositor"]

    def stats():
        batching = compositor.cache_stats.remote().result()["batching"]
        return {**compositor.streaming_stats.remote().result(), "steps": batching["row_steps"]}

    # prompts the model answers at full length (no early EOS): four long rows are still
    # decoding when their client leaves after the first chunk
    body = {"model": "dataeng", "max_tokens": 230, "n": 4, "stream": True}
    for prompt in ("SQL", "hello", "Spark", "a b c", "deploy"):
        probe = {**body, "stream": False, "n": 1, "prompt": prompt}
        if _post("/v1/completions", probe).json()["choices"][0]["finish_reason"] == "length":
            break
    else:
        pytest.skip("the tiny model ends every probe early")
    before = stats()
    assert before["continuous"] and before["running"] == 0
    with httpx.stream("POST", URL + "/v1/completions", json={**body, "prompt": prompt},
                      headers=AUTH, timeout=60) as r:  # fmt: skip
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        next(r.iter_bytes())  # the first chunks are here: the rows are decoding
    # the connection is closed: the rows leave the decoder long before their 230 tokens
    after = _until(lambda: (s := stats())["running"] == 0 and s)
    assert after["cancelled"] > before["cancelled"]
    assert after["steps"] - before["steps"] < 4 * 230
    # a unary request whose client gives up (times out) is cancelled the same way: eight
    # rows of 230 tokens take several times the 0.2 s the client waits
    unary = {**body, "stream": False, "n": 8, "prompt": prompt}
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(URL + "/v1/completions", json=unary, headers=AUTH,
                   timeout=httpx.Timeout(60, read=0.2))  # fmt: skip
    final = _until(lambda: (s := stats())["running"] == 0 and s)
    assert final["cancelled"] > after["cancelled"]
    assert final["steps"] - after["steps"] < 8 * 230


def _register_and_retire_key(stack, adapter_id: str) -> str:
    """Register ``adapter_id`` (the devops weights) signed by a fresh key that signs
    nothing else, then rotate again: that key is now a retired, still-trusted key; returns
    its id. The test unregisters the adapter at its end (``stack["cleanup"]``)."""
    from qlp_ray.models.base import base_model_id
    from qlp_ray.registry.keyring import rotate_keys

    cfg, (d, _) = stack["cfg"], stack["dirs"]["devops"]
    _old, signer = rotate_keys(cfg)
    record = stack["registry"].register(d, adapter_id=adapter_id, domain="devops",
                                        base_model=base_model_id(cfg))  # fmt: skip
    stack.setdefault("cleanup", []).append(Path(record.path).parent)
    rotate_keys(cfg)
    return signer


def test_revocation_evicts_loaded_adapters_without_a_restart(stack):
    """Issue 22: a revoked key kept serving adapters already loaded. Revoked over HTTP, the
    loaded adapter leaves the compositor before the answer; revoked as `qlp keys revoke`
    does it (another process: key file + registry generation), the replica evicts it by
    itself. Requests are then 403 adapter_revoked; other adapters keep serving. A retired
    adapter is evicted the same way."""
    from qlp_ray.registry.keyring import revoke_key
    from qlp_ray.registry.store import Registry

    compositor, cfg = stack["compositor"], stack["cfg"]
    loaded = lambda: compositor.stats.remote().result()["multiplexed"]  # noqa: E731
    ask = lambda model: _post("/v1/completions", {"model": model, "prompt": "Deploy it",  # noqa: E731
                                                  "max_tokens": 2})  # fmt: skip
    signer = _register_and_retire_key(stack, "revokeme")
    assert ask("revokeme").status_code == 200
    assert loaded() == ["revokeme@1"]
    r = _post(f"/v1/admin/keys/{signer}/revoke", {})
    assert r.status_code == 200, r.text
    assert r.json()["evicted"] == ["revokeme@1"] and r.json()["acknowledged"] == 1
    stats = compositor.stats.remote().result()
    assert stats["multiplexed"] == [] and "revoked" in stats["evicted"]["revokeme@1"]
    assert not [a for a in stats["backend_adapters"] if a.startswith("revokeme")]
    for model in ("revokeme", "revokeme@1"):
        err = _assert_openai_error(ask(model), 403, "adapter_revoked")
        assert f"signed by key {signer}, which was revoked" in err["message"]
    assert loaded() == []  # refused before anything was loaded again
    assert ask("dataeng").status_code == 200  # signed by another key: still served

    signer = _register_and_retire_key(stack, "revokeme2")
    assert ask("revokeme2").status_code == 200 and loaded() == ["revokeme2@1"]
    revoke_key(cfg, signer)  # what `qlp keys revoke` does, in this (another) process
    Registry(cfg).storage.bump_generation()
    assert _until(lambda: loaded() == [], timeout_s=15)  # the replica follows the generation
    assert "revoked" in compositor.stats.remote().result()["evicted"]["revokeme2@1"]
    _assert_openai_error(ask("revokeme2"), 403, "adapter_revoked")

    _register_and_retire_key(stack, "retireme")  # retiring an adapter evicts it the same way
    assert ask("retireme").status_code == 200 and loaded() == ["retireme@1"]
    stack["registry"].retire("retireme", reason="unsafe")
    assert _until(lambda: loaded() == [], timeout_s=15)
    assert "retired" in compositor.stats.remote().result()["evicted"]["retireme@1"]
    for path in stack.pop("cleanup"):  # unregister: later tests see the module's adapters
        shutil.rmtree(path)
