"""A/B experiments in the serving path (no Ray): audience, assignment, persistence, analysis."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta

import pytest
from fastapi import Request  # module level: the test app's annotations are strings
from pydantic import ValidationError

from qlp_ray.core.errors import Conflict, NotFound
from qlp_ray.experiments.ab import (
    Assignment,
    ExperimentSpec,
    min_sample_size,
    wilson_interval,
)
from qlp_ray.experiments.runtime import ExperimentRuntime, RequestFacts, joins, status_of
from qlp_ray.experiments.store import ExperimentStore
from qlp_ray.store.database import FeedbackStore
from qlp_ray.store.records import RequestRecord

T0 = datetime(2026, 6, 1, tzinfo=UTC)


def _spec(**kw) -> ExperimentSpec:
    base = {
        "id": "dataeng-ab",
        "applies_to": ["dataeng"],
        "variants": [
            {"name": "v1", "target": "dataeng@1"},
            {"name": "v2", "target": "dataeng@2"},
        ],
    }
    base.update(kw)
    return ExperimentSpec.model_validate(base)


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def store(tmp_path):
    s = FeedbackStore(f"sqlite:///{tmp_path / 'fb.db'}", synchronous="NORMAL")
    yield s
    s.close()


def _runtime(store: FeedbackStore, clock: Clock | None = None, seed: int = 0) -> ExperimentRuntime:
    return ExperimentRuntime(
        ExperimentStore(store.engine), seed=seed, refresh_interval_s=2.0, clock=clock or Clock()
    )


EXPLICIT = RequestFacts("dataeng", routed=False, adapter="dataeng", domain="dataeng", user="u1")


@pytest.mark.parametrize(
    ("spec_kw", "facts", "expected"),
    [
        ({}, EXPLICIT, True),
        ({}, RequestFacts("frontend", False, "frontend", "frontend"), False),
        ({}, RequestFacts("dataeng@1", False, "dataeng", "dataeng"), False),  # pinned by client
        ({}, RequestFacts("auto", True, "dataeng", "dataeng"), True),  # routed to dataeng
        ({}, RequestFacts("auto", True, "frontend", "frontend"), False),
        ({"applies_to": []}, RequestFacts("auto", True, "frontend", "frontend"), True),
        ({"applies_to": []}, EXPLICIT, False),  # [] = routed requests only
        ({"applies_to": ["auto"]}, RequestFacts("auto", True, None, None), False),  # fallback
        ({"domains": ["ml"]}, EXPLICIT, False),
        ({"domains": ["dataeng"]}, EXPLICIT, True),
        ({"metadata": {"tier": "pro"}}, EXPLICIT, False),
        (
            {"metadata": {"tier": "pro"}},
            RequestFacts("dataeng", False, "dataeng", "dataeng", metadata={"tier": "pro"}),
            True,
        ),
        ({"metadata": {"user": "u1"}}, EXPLICIT, True),
        ({"metadata": {"user": "u2"}}, EXPLICIT, False),
    ],
)
def test_audience(spec_kw, facts, expected):
    assert joins(_spec(**spec_kw), facts) is expected


def test_spec_strategies_and_weights():
    assert _spec(strategy="thompson").is_bandit and _spec(bandit=True).is_bandit
    assert not _spec(strategy="weighted").is_bandit
    with pytest.raises(ValidationError, match="strategy"):
        _spec(strategy="roulette")
    with pytest.raises(ValidationError, match="sum to more than 0"):
        _spec(variants=[{"name": "a", "target": "x", "weight": 0},
                        {"name": "b", "target": "y", "weight": 0}])  # fmt: skip
    with pytest.raises(ValidationError, match="greater than or equal to 0"):
        _spec(variants=[{"name": "a", "target": "x", "weight": -1},
                        {"name": "b", "target": "y"}])  # fmt: skip


def test_assignment_sticky_weights_zero_weight_and_window(store):
    rt = _runtime(store)
    rt.create(_spec(variants=[{"name": "v1", "target": "dataeng@1", "weight": 3},
                              {"name": "v2", "target": "dataeng@2", "weight": 1},
                              {"name": "off", "target": "dataeng", "weight": 0}]))  # fmt: skip
    got = {}
    for i in range(4000):
        a = rt.assign(RequestFacts("dataeng", False, "dataeng", "dataeng", user=f"user{i}"))
        got[f"user{i}"] = a.variant
    assert set(got.values()) == {"v1", "v2"}  # a zero weight gets no traffic
    assert sum(v == "v1" for v in got.values()) / 4000 == pytest.approx(0.75, abs=0.03)
    again = {u: rt.assign(RequestFacts("dataeng", False, "dataeng", "dataeng", user=u)).variant
             for u in list(got)[:300]}  # fmt: skip
    assert again == {u: got[u] for u in again}  # sticky
    other = _runtime(store, seed=99)  # another replica: same answers for the same users
    other.refresh()
    assert all(other.assign(RequestFacts("dataeng", False, "dataeng", "dataeng", user=u)).variant
               == v for u, v in again.items())  # fmt: skip
    assert rt.assign(RequestFacts("frontend", False, "frontend", "frontend", user="x")) is None
    # time window: a scheduled experiment does not assign until its start
    rt2 = _runtime(store)
    rt2.create(_spec(id="later", applies_to=["api"], start=T0, end=T0 + timedelta(days=1)))
    api = RequestFacts("api", False, "api", "api", user="u")
    assert rt2.assign(api, now=T0 - timedelta(seconds=1)) is None
    assert rt2.assign(api, now=T0).experiment_id == "later"
    assert rt2.assign(api, now=T0 + timedelta(days=1)) is None
    row = rt2.store.get("later")
    assert status_of(row, T0 - timedelta(hours=1)) == "scheduled"
    assert status_of(row, T0 + timedelta(hours=1)) == "running"
    assert status_of(row, T0 + timedelta(days=2)) == "ended"


def test_weighted_strategy_follows_weights(store):
    rt = _runtime(store, seed=5)
    arms = [{"name": "a", "target": "x", "weight": 1}, {"name": "b", "target": "y", "weight": 4}]
    rt.create(_spec(strategy="weighted", variants=arms))
    facts = RequestFacts("dataeng", False, "dataeng", "dataeng", user="same-user")
    share = sum(rt.assign(facts).variant == "a" for _ in range(10000)) / 10000
    assert share == pytest.approx(0.2, abs=0.02)  # per request, not per user


def test_persisted_definitions_survive_restart_and_stop_reaches_replicas(store, tmp_path):
    clock = Clock()
    a, b = _runtime(store, clock), _runtime(store, clock)
    a.create(_spec())
    with pytest.raises(Conflict, match="already exists"):
        a.create(_spec())
    assert b.running == ()
    b.refresh()  # replica b sees a's experiment
    assert [e.spec.id for e in b.running] == ["dataeng-ab"]
    # a restarted gateway (fresh store object on the same database) still assigns
    reopened = FeedbackStore(store.url, synchronous="NORMAL")
    restarted = _runtime(reopened)
    restarted.refresh()
    assert restarted.assign(EXPLICIT).experiment_id == "dataeng-ab"
    # config files only add new ids: the stored definition is kept, a stopped one stays stopped
    assert restarted.start_from([_spec(), _spec(id="other", applies_to=["api"])]) == ["other"]
    a.stop("dataeng-ab")
    assert a.assign(EXPLICIT) is None  # at once on the replica that stopped it
    assert b.assign(EXPLICIT) is not None and not b.stale()
    clock.t = 2.0
    assert b.stale()
    b.refresh()
    assert b.assign(EXPLICIT) is None
    assert restarted.start_from([_spec()]) == []
    assert [(d["id"], d["status"]) for d in a.list()] == [
        ("dataeng-ab", "stopped"),
        ("other", "running"),
    ]
    assert a.stop("dataeng-ab")["status"] == "stopped"  # idempotent
    with pytest.raises(NotFound, match="'ghost'"):
        a.analysis("ghost")
    reopened.close()


def _serve(store: FeedbackStore, rt: ExperimentRuntime, variant: str, i: int, *, ok: bool,
           latency_s: float) -> str:  # fmt: skip
    """An assigned request as the gateway leaves it: request-log row, or a failure row."""
    rid = f"{variant}-{i}"
    if ok:
        store.record_request(RequestRecord(id=rid, model="dataeng", prompt="p", response="r",
                                           latency_ms=latency_s * 1000, experiment="dataeng-ab",
                                           variant=variant))  # fmt: skip
    else:
        rt.record_failure(rid, Assignment("dataeng-ab", variant, "x"), status=424,
                          latency_s=latency_s)  # fmt: skip
    return rid


def test_analysis_numbers_from_store_counts(store):
    rt = _runtime(store)
    rt.create(_spec(min_detectable_effect=0.15))
    # v1: 100 answered (30 up, 70 down) + 5 errors; v2: 100 answered (45 up, 55 down)
    for variant, ups, n in (("v1", 30, 100), ("v2", 45, 100)):
        for i in range(n):
            rid = _serve(store, rt, variant, i, ok=True, latency_s=0.1 if variant == "v1" else 0.3)
            store.record_feedback(rid, "thumbs", 1 if i < ups else -1)
    for i in range(5):
        _serve(store, rt, "v1", 1000 + i, ok=False, latency_s=5.0)
    # the latest thumbs/rating decides: v2-99 (down) is then rated 5 -> success; ratings
    store.record_feedback("v2-99", "rating", 5)
    store.record_feedback("v2-0", "rating", 2)  # v2-0 (up) is now a failure
    for i in range(10, 13):
        store.record_feedback(f"v1-{i}", "rating", 4)
    report = rt.analysis("dataeng-ab")
    v1, v2 = report["variants"]
    assert (v1["impressions"], v1["errors"]) == (105, 5)
    with pytest.raises(Conflict):  # one failure row per request
        _serve(store, rt, "v1", 1000, ok=False, latency_s=1.0)
    # v1: 30 up, 70 down, 3 of the ups re-rated 4 (>= 4: still successes) + 5 errors
    assert (v1["successes"], v1["failures"]) == (30, 75)
    assert (v2["successes"], v2["failures"]) == (45, 55)
    assert v1["mean_latency_s"] == pytest.approx(0.1) and v2["mean_latency_s"] == pytest.approx(0.3)
    assert v1["mean_feedback"] == pytest.approx(4.0)
    assert v2["mean_feedback"] == pytest.approx(3.5)
    assert v1["ci"] == pytest.approx(list(wilson_interval(30, 105, 0.95)))
    # chi-square of [[30, 75], [45, 55]] by hand
    n, s, fl = 205, 75, 130
    chi2 = sum((o - e) ** 2 / e for o, e in [
        (30, 105 * s / n), (75, 105 * fl / n), (45, 100 * s / n), (55, 100 * fl / n)])  # fmt: skip
    assert report["chi2"] == pytest.approx(chi2)
    assert report["p_value"] == pytest.approx(math.erfc(math.sqrt(chi2 / 2)))
    assert report["significant"] is (report["p_value"] < 0.05)
    need = min_sample_size(30 / 105, 0.15, 0.95, 0.8)
    assert report["min_sample_size_per_variant"] == need
    assert report["winner"] == ("v2" if report["significant"] and need <= 100 else None)
    assert v1["traffic_share"] == pytest.approx(105 / 205) and v1["bandit_share"] is None
    assert report["status"] == "running" and report["active"] is True
    # 'served' success: answered = success, errors = failures (feedback ignored)
    rt.create(_spec(id="served", success="served", variants=[
        {"name": "v1", "target": "a"}, {"name": "v2", "target": "b"}]))  # fmt: skip
    stats = rt.store.variant_stats(rt.store.get("served").spec)
    assert stats["v1"].impressions == 0
    served = ExperimentStore(store.engine).variant_stats(_spec(success="served"))
    assert (served["v1"].successes, served["v1"].failures) == (100, 5)


def test_bandit_reads_store_counts_and_shifts_traffic(store):
    clock = Clock()
    rt = _runtime(store, clock, seed=3)
    rt.create(_spec(strategy="thompson"))
    for i in range(60):  # v2 much better in the store (written by "another replica")
        store.record_feedback(_serve(store, rt, "v1", i, ok=True, latency_s=0.1), "thumbs",
                              1 if i < 15 else -1)  # fmt: skip
        store.record_feedback(_serve(store, rt, "v2", i, ok=True, latency_s=0.1), "thumbs",
                              1 if i < 45 else -1)  # fmt: skip
    clock.t = 10.0
    rt.refresh()
    exp = rt.running[0]
    assert (exp.stats["v2"].successes, exp.stats["v2"].failures) == (45, 15)
    picks = [rt.assign(RequestFacts("dataeng", False, "dataeng", "dataeng", user=f"u{i}")).variant
             for i in range(1000)]  # fmt: skip
    assert picks.count("v2") / 1000 > 0.95
    shares = {v["name"]: v["bandit_share"] for v in rt.analysis("dataeng-ab")["variants"]}
    assert shares["v2"] > 0.99 and shares["v1"] + shares["v2"] == pytest.approx(1.0)


def test_outcome_middleware_records_failures_only(store):
    """The ASGI middleware sees the final status through the app's other middleware and
    exception handlers: an assigned request that fails is a durable failure of its variant."""
    from types import SimpleNamespace

    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    from qlp_ray.core.errors import AdapterLoadError
    from qlp_ray.serve.experiment_hook import (
        STATE_KEY,
        ExperimentOutcomeMiddleware,
        PendingOutcome,
    )
    from qlp_ray.serve.http.errors import install_error_handlers

    rt = _runtime(store)
    rt.create(_spec())
    hook = SimpleNamespace(runtime=rt, store_errors=0)
    app = FastAPI()

    @app.get("/serve/{variant}/{outcome}")
    async def serve(variant: str, outcome: str, request: Request) -> dict:
        assignment = Assignment("dataeng-ab", variant, f"dataeng@{variant[-1]}")
        pending = PendingOutcome(hook, assignment, request.state.request_id, "u", 0.0)
        setattr(request.state, STATE_KEY, pending)
        if outcome == "fail":
            raise AdapterLoadError("corrupt weights")
        return {"ok": True}

    install_error_handlers(app)
    app.add_middleware(ExperimentOutcomeMiddleware)
    with TestClient(app) as client:
        assert client.get("/serve/v1/ok", headers={"x-request-id": "r1"}).status_code == 200
        assert client.get("/serve/v2/fail", headers={"x-request-id": "r2"}).status_code == 424
        assert client.get("/serve/v2/fail", headers={"x-request-id": "r3"}).status_code == 424
        assert client.get("/serve/v2/fail", headers={"x-request-id": "r3"}).status_code == 424
    stats = rt.store.variant_stats(_spec())
    assert (stats["v1"].impressions, stats["v2"].impressions) == (0, 3)  # r1: the request log's
    # a client's repeated x-request-id is not the request's id: three failures, three rows
    assert stats["v2"].errors == 3 and stats["v2"].failures == 3
    assert hook.store_errors == 0
