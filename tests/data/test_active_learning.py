"""Active learning: scoring maths, k-center greedy, selection rules, the store label queue."""

from __future__ import annotations

import zlib

import numpy as np
import pytest
from typer.testing import CliRunner

from qlp_ray.core.config import ActiveLearningConfig
from qlp_ray.core.errors import InvalidRequest
from qlp_ray.data import active_learning as active
from qlp_ray.data.label_queue import (
    centroid_mc_dropout,
    next_to_label,
    routing_probs,
    weak_area_weights,
)
from qlp_ray.store.database import AdapterStats, FeedbackStore

PROBS = np.array([[0.98, 0.01, 0.01], [0.5, 0.49, 0.01], [1 / 3, 1 / 3, 1 / 3], [0.6, 0.2, 0.2]])


def test_uncertainty_scores_match_formulas():
    ent = active.entropy_scores(PROBS)
    assert ent[2] == pytest.approx(np.log(3))
    assert ent[0] == pytest.approx(-(0.98 * np.log(0.98) + 2 * 0.01 * np.log(0.01)))
    assert active.margin_scores(PROBS) == pytest.approx([0.03, 0.99, 1.0, 0.6])
    assert active.least_confidence_scores(PROBS) == pytest.approx([0.02, 0.5, 2 / 3, 0.4])
    samples = np.stack([PROBS, PROBS[[0, 1, 2, 3]][:, [1, 0, 2]]])  # passes disagree on 0 and 3
    var = active.mc_dropout_scores(samples)
    assert var[2] == pytest.approx(0.0) and var[0] > var[3] > var[1]
    assert var[0] == pytest.approx(((0.97 / 2) ** 2 * 2) / 3)
    with pytest.raises(InvalidRequest, match="sum to 1"):
        active.entropy_scores(np.array([[0.7, 0.7]]))
    with pytest.raises(InvalidRequest, match="passes >= 2"):
        active.mc_dropout_scores(PROBS[None])


def test_k_center_greedy_covers_clusters():
    rng = np.random.default_rng(0)
    centres = np.eye(4, 16, dtype=np.float32)
    pts = np.concatenate([c + 0.05 * rng.standard_normal((25, 16)) for c in centres])
    picks, gains = active.k_center_greedy(pts.astype(np.float32), 4)
    assert sorted(p // 25 for p in picks) == [0, 1, 2, 3]  # one pick per cluster
    assert np.all(np.diff(gains[1:]) <= 1e-6)  # farthest-first: gains never increase
    # With clusters 0-2 labelled, the first pick lands in the unlabelled cluster 3.
    first, _ = active.k_center_greedy(pts.astype(np.float32), 1, labelled=centres[:3])
    assert first[0] // 25 == 3


def test_select_batch_priorities_duplicates_and_task_weights():
    emb = np.eye(4, 8, dtype=np.float32)
    emb[1] = emb[0] * 0.999 + 0.001  # near-duplicate of row 0
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    probs = np.array([[0.5, 0.5], [0.5, 0.5], [0.9, 0.1], [0.7, 0.3]])
    picks = active.select_batch("entropy", 3, probs=probs, embeddings=emb)
    assert [p.index for p in picks] == [0, 3, 2]  # 1 dropped as a near-duplicate of 0
    assert picks[0].priority == "high" and picks[-1].priority == "low"
    no_filter = active.select_batch("entropy", 2, probs=probs, duplicate_threshold=None)
    assert [p.index for p in no_filter] == [0, 1]
    # A labelled near-duplicate also blocks; task weights move a weak task up.
    picks = active.select_batch("entropy", 2, probs=probs, embeddings=emb,
                                labelled_embeddings=emb[:1], tasks=["a", "a", "ml", "a"],
                                task_weights={"ml": 3.0})  # fmt: skip
    assert [p.index for p in picks] == [2, 3] and picks[0].task == "ml"
    div = active.select_batch("diversity", 2, embeddings=emb, labelled_embeddings=emb[:1])
    assert {p.index for p in div} == {2, 3}
    with pytest.raises(InvalidRequest, match="unknown active-learning method"):
        active.select_batch("vibes", 2, probs=probs)
    with pytest.raises(InvalidRequest, match="needs prob_samples"):
        active.select_batch("mc_dropout", 2, probs=probs)
    with pytest.raises(InvalidRequest, match="tasks has 1 entries"):
        active.select_batch("margin", 2, probs=probs, tasks=["x"])


def test_nearest_similarity_backend_agrees_with_numpy():
    rng = np.random.default_rng(1)
    q, ref = rng.standard_normal((20, 32)), rng.standard_normal((50, 32))
    got = active.nearest_similarity(q.astype(np.float32), ref.astype(np.float32))
    qn = q / np.linalg.norm(q, axis=1, keepdims=True)
    rn = ref / np.linalg.norm(ref, axis=1, keepdims=True)
    assert got == pytest.approx((qn @ rn.T).max(axis=1), abs=1e-5)


def test_weak_areas_and_router_probs():
    stats = [AdapterStats("a", "api", 10, 2.0, 0.5, None, 5.0),
             AdapterStats("m", "ml", 10, 5.0, 0.0, None, 5.0)]  # fmt: skip
    assert weak_area_weights(stats) == {"api": pytest.approx(2.25), "ml": 1.0}
    p = routing_probs({"scores": {"api": 0.5, "ml": 0.4}}, ["api", "ml"], 0.05)
    assert p == pytest.approx([1 / (1 + np.exp(-2)), 1 / (1 + np.exp(2))])
    assert routing_probs(None, ["api", "ml"], 0.05) == pytest.approx([0.5, 0.5])
    emb = np.eye(2, dtype=np.float32)
    samples = centroid_mc_dropout(emb, emb, passes=5, rate=0.5, temperature=0.1)
    assert samples.shape == (5, 2, 2) and np.allclose(samples.sum(axis=2), 1.0)


def _fake_embed(texts):
    """Deterministic bag-of-words hashing embedding (a pure function, not a model)."""
    out = np.zeros((len(texts), 64), dtype=np.float32)
    for i, t in enumerate(texts):
        for w in t.lower().split():
            out[i, zlib.crc32(w.encode()) % 64] += 1.0
    return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-9)


@pytest.fixture
def store(tmp_path):
    s = FeedbackStore(f"sqlite:///{tmp_path / 'fb.db'}")
    confident = {"api": 0.9, "ml": 0.1}
    unsure = {"api": 0.50, "ml": 0.49}
    rows = [("rest pagination cursor", "api", confident), ("lora rank choice", "ml", unsure),
            ("oauth token refresh", "api", unsure), ("gpu memory oom", "ml", confident),
            ("labelled already", "api", unsure)]  # fmt: skip
    ids = [
        s.record_request(
            model="base", prompt=p, response="r", domain=d, routing={"scores": sc, "target": d}
        )  # fmt: skip
        for p, d, sc in rows
    ]
    s.record_feedback(ids[4], "thumbs", -1)
    yield s, ids
    s.close()


def test_label_queue_from_store(store):
    s, ids = store
    cfg = ActiveLearningConfig(weak_area_weighting=False)
    items = next_to_label(s, _fake_embed, cfg, k=2, method="margin")
    assert [it.request_id for it in items] == [ids[1], ids[2]]  # the two unsure, unlabelled
    assert items[0].priority == "high" and items[0].domain == "ml"
    weighted = next_to_label(s, _fake_embed, ActiveLearningConfig(), k=1, method="margin")
    assert weighted[0].request_id == ids[2]  # api has a thumbs-down: weighed up
    for m in ("entropy", "least_confidence", "mc_dropout", "diversity", "random"):
        got = next_to_label(s, _fake_embed, cfg, k=4, method=m)
        assert {it.request_id for it in got} == set(ids[:4]), m
    assert all(it.request_id != ids[4] for it in got)


def test_cli_label_next(store, tmp_path, monkeypatch):
    from qlp_ray.cli import app, state

    s, ids = store
    monkeypatch.setenv("QLP_DB_URL", s.url)
    monkeypatch.setattr(state, "_config", None)
    result = CliRunner().invoke(app, ["label", "next", "--k", "2", "--method", "margin", "--json"])
    assert result.exit_code == 0, result.output
    assert ids[1] in result.output and ids[2] in result.output and ids[0] not in result.output
    assert '"priority": "high"' in result.output


def test_http_routes_feedback_and_label_queue(store):
    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    from qlp_ray.serve.http.improve_api import improve_router

    s, ids = store
    app = FastAPI()
    app.include_router(improve_router(s, _fake_embed, ActiveLearningConfig()))
    client = TestClient(app)
    r = client.get("/v1/admin/label-queue", params={"k": 2, "method": "margin"})
    assert r.status_code == 200
    assert {d["request_id"] for d in r.json()["data"]} == {ids[1], ids[2]}
    r = client.post("/v1/feedback", json={"request_id": ids[1], "kind": "rating", "value": 5})
    assert r.status_code == 200 and r.json()["request_id"] == ids[1]
    r = client.get("/v1/admin/label-queue", params={"k": 5, "method": "margin"})
    assert ids[1] not in {d["request_id"] for d in r.json()["data"]}  # labelled now
    bad = client.post("/v1/feedback", json={"request_id": ids[0], "kind": "rating", "value": 9})
    assert bad.status_code == 400 and bad.json()["error"]["code"] == "invalid_request"
    assert "[1, 5]" in bad.json()["error"]["message"]
    missing = client.post("/v1/feedback", json={"request_id": "nope", "kind": "thumbs", "value": 1})
    assert missing.status_code == 404 and missing.json()["error"]["type"] == "invalid_request_error"
    r = client.get("/v1/admin/label-queue", params={"method": "vibes"})
    assert r.status_code == 400 and "unknown active-learning method" in r.json()["error"]["message"]
