"""Issue 22, finding 2: feedback was not bound to its caller (anyone could rate or "correct"
any request id, a correction became an SFT example, thumbs decided A/B promotion)."""

from __future__ import annotations

from qlp_ray.experiments.ab import ExperimentSpec
from qlp_ray.experiments.store import ExperimentStore
from qlp_ray.improve.feedback_data import collect_examples
from tests.security.conftest import bearer, build_app, make_cfg


def _request(store, rid, caller, *, domain="api", experiment=None, variant=None):
    store.record_request(id=rid, model="m", adapter_id="a", adapter_version=1, domain=domain,
                         prompt=f"prompt {rid}", response=f"response {rid}", caller=caller,
                         experiment=experiment, variant=variant)  # fmt: skip


def feedback_examples(store, domain, _cfg):
    """Training rows the improvement loop would mine from ``domain``'s feedback."""
    return collect_examples(store, domain, min_score=0.5, heldout_fraction=0.0).train


def _key_id(keys, role, cfg):
    from qlp_ray.core.api_keys import hash_key, key_file, load_keys

    return next(k.key_id for k in load_keys(key_file(cfg.paths.keys))
                if k.sha256 == hash_key(keys[role]))  # fmt: skip


def test_feedback_on_someone_elses_request_is_a_404_like_an_unknown_id(keyed):
    client, keys, cfg = keyed
    store = client.app.state.gateway.recorder.store
    _request(store, "req-alice", _key_id(keys, "user", cfg))
    mallory = bearer(keys["trainer"])  # a valid key, but not the one that made the request
    other = client.post(
        "/v1/feedback",
        headers=mallory,
        json={"request_id": "req-alice", "kind": "thumbs", "value": -1},
    )
    ghost = client.post(
        "/v1/feedback",
        headers=mallory,
        json={"request_id": "req-ghost", "kind": "thumbs", "value": -1},
    )
    assert other.status_code == ghost.status_code == 404

    def strip(r):
        return r.json()["error"]["message"].replace("req-alice", "X").replace("req-ghost", "X")

    assert strip(other) == strip(ghost)  # nothing tells the two apart
    assert store.query_feedback(request_id="req-alice") == []
    own = client.post(
        "/v1/feedback",
        headers=bearer(keys["user"]),
        json={"request_id": "req-alice", "kind": "thumbs", "value": 1},
    )
    assert own.status_code == 200, own.text
    (fb,) = store.query_feedback(request_id="req-alice")
    assert fb.trusted and fb.caller == _key_id(keys, "user", cfg)


def test_corrections_wait_for_a_reviewer_and_the_audit_log_names_them(keyed):
    client, keys, cfg = keyed
    store = client.app.state.gateway.recorder.store
    user = bearer(keys["user"])
    _request(store, "req-1", _key_id(keys, "user", cfg))
    body = {"request_id": "req-1", "kind": "correction", "payload": {"text": "the right answer"}}
    r = client.post("/v1/feedback", headers=user, json=body)
    assert r.status_code == 200 and r.json()["review"] == "pending"
    assert feedback_examples(store, "api", cfg.improve) == []  # not training data yet
    assert client.get("/v1/admin/corrections", headers=user).status_code == 403
    queue = client.get("/v1/admin/corrections", headers=bearer(keys["reviewer"])).json()["data"]
    assert [(q["request_id"], q["correction"], q["review"]) for q in queue] == [
        ("req-1", "the right answer", "pending")]  # fmt: skip
    fid = queue[0]["id"]
    r = client.post(f"/v1/admin/corrections/{fid}/accept", headers=bearer(keys["reviewer"]))
    assert r.status_code == 200 and r.json()["review"] == "accepted"
    rows = feedback_examples(store, "api", cfg.improve)
    assert [row["output"] for row in rows] == ["the right answer"]
    (event,) = store.query_events(kinds=["review"])
    assert event.actor == _key_id(keys, "reviewer", cfg)
    assert event.payload["decision"] == "accepted" and event.payload["feedback_id"] == fid
    assert client.post("/v1/admin/corrections/999/accept",
                       headers=bearer(keys["admin"])).status_code == 404  # fmt: skip


def test_untrusted_feedback_counts_for_neither_training_nor_ab_promotion(tmp_path):
    """Feedback written past the binding (e.g. before it existed) is stored untrusted."""
    cfg = make_cfg(tmp_path)
    app = build_app(cfg)
    store = app.state.gateway.recorder.store
    spec = ExperimentSpec.model_validate({
        "id": "ab", "success": "feedback",
        "variants": [{"name": "a", "target": "m1"}, {"name": "b", "target": "m2"}],
    })  # fmt: skip
    for i in range(6):
        _request(store, f"r{i}", "ak-owner", experiment="ab", variant="b")
        # the owner's thumbs down; a stranger's thumbs up on the same requests
        store.record_feedback(f"r{i}", "thumbs", -1.0, caller="ak-owner")
        store.record_feedback(f"r{i}", "thumbs", 1.0, caller="ak-stranger")
        store.record_feedback(f"r{i}", "correction", payload={"text": "poison"},
                              caller="ak-stranger")  # fmt: skip
    stats = ExperimentStore(store.engine).variant_stats(spec)["b"]
    assert (stats.successes, stats.failures) == (0, 6)  # the stranger's later thumbs ignored
    assert all(row["output"] != "poison" for row in feedback_examples(store, "api", cfg.improve))
    assert len(store.feedback_with_requests(trusted_only=False)) == 18
    assert len(store.feedback_with_requests()) == 6
    app.state.gateway.recorder.close()


def test_feedback_is_rate_limited_per_key(tmp_path):
    from fastapi.testclient import TestClient

    cfg = make_cfg(tmp_path, {"feedback_per_minute": 3, "api_key": "k1"})
    app = build_app(cfg)
    with TestClient(app) as client:
        codes = [
            client.post(
                "/v1/feedback",
                headers=bearer("k1"),
                json={"request_id": "none", "kind": "thumbs", "value": 1},
            ).status_code
            for _ in range(5)
        ]
        assert codes == [404, 404, 404, 429, 429]
        r = client.post(
            "/v1/feedback",
            headers=bearer("k1"),
            json={"request_id": "none", "kind": "thumbs", "value": 1},
        )
        assert r.json()["error"]["code"] == "rate_limit_exceeded" and "retry-after" in r.headers
    app.state.gateway.recorder.close()
