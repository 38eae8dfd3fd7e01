"""POST /v1/feedback on a gateway replica that did not serve the request (no Ray).

Two replicas share one SQLite store; the one that served a request commits its row a few
milliseconds after the reply. Feedback reaching the other replica meanwhile must wait for
the row (up to ``store.feedback_wait_s``) instead of answering 404.
"""

from __future__ import annotations

import threading
import time
from types import SimpleNamespace

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from qlp_ray.core.config import load_config
from qlp_ray.serve.http.errors import install_error_handlers
from qlp_ray.serve.http.routes_improve import router
from qlp_ray.serve.telemetry.recording import RequestRecorder
from qlp_ray.store.database import FeedbackStore
from qlp_ray.store.records import RequestRecord


def _replica(tmp_path, wait_s: float) -> tuple[TestClient, RequestRecorder]:
    cfg = load_config(
        overrides={"paths": {"home": str(tmp_path)}, "store": {"feedback_wait_s": wait_s}},
        environ={},
    )
    recorder = RequestRecorder(cfg, "base")
    app = FastAPI()
    app.include_router(router)
    install_error_handlers(app)
    app.state.gateway = SimpleNamespace(cfg=cfg, recorder=recorder)
    return TestClient(app), recorder


def _row(request_id: str) -> RequestRecord:
    return RequestRecord(id=request_id, model="api", prompt="p", response="r", latency_ms=5.0)


@pytest.fixture()
def replica(tmp_path):
    client, recorder = _replica(tmp_path, wait_s=2.0)
    yield client, recorder.store
    recorder.close()


def test_feedback_waits_for_a_row_another_replica_commits(replica, tmp_path):
    client, store = replica
    other = FeedbackStore(f"sqlite:///{tmp_path / 'feedback.db'}")  # the serving replica
    commit_after_s = 0.3
    writer = threading.Timer(commit_after_s, other.record_request, args=(_row("req-b"),))
    t0 = time.monotonic()
    writer.start()
    r = client.post("/v1/feedback", json={"request_id": "req-b", "kind": "thumbs", "value": 1})
    elapsed = time.monotonic() - t0
    writer.join()
    other.close()
    assert r.status_code == 200, r.text
    assert r.json()["request_id"] == "req-b"
    assert commit_after_s * 0.9 <= elapsed < 1.5  # answered soon after the row appeared
    assert [f.kind for f in store.query_feedback(request_id="req-b")] == ["thumbs"]


def test_feedback_on_a_stored_row_does_not_wait(replica):
    client, store = replica
    store.record_request(_row("req-a"))
    t0 = time.monotonic()
    r = client.post("/v1/feedback", json={"request_id": "req-a", "kind": "rating", "value": 4})
    assert r.status_code == 200, r.text
    assert time.monotonic() - t0 < 0.5


@pytest.mark.parametrize("wait_s", [0.3, 0.0])
def test_unknown_request_id_is_404_after_the_wait(tmp_path, wait_s):
    client, recorder = _replica(tmp_path, wait_s=wait_s)
    try:
        t0 = time.monotonic()
        r = client.post("/v1/feedback", json={"request_id": "nope", "kind": "thumbs", "value": 1})
        elapsed = time.monotonic() - t0
        assert r.status_code == 404
        assert "nope" in r.json()["error"]["message"]
        assert wait_s <= elapsed < wait_s + 0.5  # 0: no wait configured, 404 at once
        assert recorder.store.query_feedback(request_id="nope") == []
        # a bad body is refused at once, not retried
        t0 = time.monotonic()
        bad = client.post("/v1/feedback", json={"request_id": "nope", "kind": "rating", "value": 9})
        assert bad.status_code == 400
        assert time.monotonic() - t0 < 0.3
    finally:
        recorder.close()
