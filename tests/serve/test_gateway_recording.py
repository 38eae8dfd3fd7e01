"""Gateway recording over real HTTP: store rows, feedback, label queue, analytics, openai client.

Real local Ray + Serve (the session's Serve port), the tiny base model and real PEFT
adapters registered in a Registry (the stack of ``test_serve_http``, its own app).
"""

from __future__ import annotations

import httpx
import pytest

from tests.helpers.ray_start import SERVE_PORT, SERVE_URL, deployed
from tests.helpers.request_log import committed_request
from tests.serve.test_serve_http import build_stack

pytestmark = pytest.mark.integration

PORT, URL = SERVE_PORT, SERVE_URL
API_KEY = "s3cret"
AUTH = {"authorization": f"Bearer {API_KEY}"}


@pytest.fixture(scope="module")
def gw(tmp_path_factory, ray_local):
    from qlp_ray.store.database import FeedbackStore

    cfg, registry, _dirs = build_stack(tmp_path_factory.mktemp("qlp_gw_home"))
    cfg.serve.port = PORT
    with deployed(cfg) as url:
        assert url == URL
        store = FeedbackStore.from_config(cfg, environ={})
        yield {"cfg": cfg, "store": store}
        store.close()


def _post(path: str, body, headers=AUTH) -> httpx.Response:
    return httpx.post(URL + path, json=body, timeout=60, headers=headers)


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
    """A duplicate request id makes the store insert fail: both requests still answer 200."""
    headers = {**AUTH, "x-request-id": "dup-request-id-1"}
    body = {"model": "dataeng", "prompt": "Write a SQL join", "max_tokens": 4}
    before = httpx.get(URL + "/v1/admin/analytics", headers=AUTH, timeout=30).json()
    answers = [httpx.post(URL + "/v1/completions", json=body, headers=headers, timeout=60)
               for _ in range(2)]  # fmt: skip
    assert [r.status_code for r in answers] == [200, 200]
    assert {r.json()["qlp"]["request_id"] for r in answers} == {"dup-request-id-1"}
    after = httpx.get(URL + "/v1/admin/analytics", headers=AUTH, timeout=30).json()
    assert after["store_errors"] == before["store_errors"] + 1
    assert after["cost"]["total"]["requests"] == before["cost"]["total"]["requests"] + 2
    assert committed_request(gw["store"], "dup-request-id-1").prompt == "Write a SQL join"


def test_feedback_right_after_the_reply_finds_its_request(gw):
    """The reply does not wait for the request-log commit; feedback sent at once must still
    find the request (the feedback route waits for a row still queued in its replica; the
    wait itself is tested with a held-up writer in tests/serve/test_request_log.py)."""
    for i in range(10):
        r = _post("/v1/completions", {"model": "frontend", "prompt": f"Center div {i}",
                                      "max_tokens": 2})  # fmt: skip
        assert r.status_code == 200, r.text
        rid = r.json()["qlp"]["request_id"]
        fb = _post("/v1/feedback", {"request_id": rid, "kind": "thumbs", "value": 1})
        assert fb.status_code == 200, fb.text
        assert [f.kind for f in gw["store"].query_feedback(request_id=rid)] == ["thumbs"]
    log = httpx.get(URL + "/v1/admin/analytics", headers=AUTH, timeout=30).json()["request_log"]
    assert log["pending"] == 0 and log["written"] >= 10 and log["batches"] >= 1
