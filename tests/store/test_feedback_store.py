"""Feedback store: same behaviour on SQLite and a real PostgreSQL server; crash durability."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from sqlalchemy import inspect

from qlp_ray.core.config import load_config
from qlp_ray.core.errors import ConfigError, InvalidRequest, NotFound
from qlp_ray.store import schema
from qlp_ray.store.database import FeedbackStore, resolve_store_url
from tests.helpers.postgres import PostgresUnavailable, postgres_database

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def pg_server_url():
    """A fresh database on a real PostgreSQL server for this module, or a skip saying why."""
    try:
        with postgres_database() as url:
            yield url
    except PostgresUnavailable as exc:
        pytest.skip(f"PostgreSQL not available: {exc}")


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request, tmp_path):
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'feedback.db'}"
    url = request.getfixturevalue("pg_server_url")
    # One database per module: clear it so each test starts empty.
    from sqlalchemy import create_engine

    eng = create_engine(url)
    schema.metadata.drop_all(eng)
    eng.dispose()
    return url


@pytest.fixture
def store(store_url):
    s = FeedbackStore(store_url)
    yield s
    s.close()


def _request(store: FeedbackStore, **kw) -> str:
    fields = dict(model="base", prompt="list pods", response="kubectl get pods", domain="devops")
    fields.update(kw)
    return store.record_request(**fields)


def test_round_trip_and_joins(store):
    rid = _request(store, adapter_id="devops", adapter_version=2, latency_ms=12.5,
                   routing={"target": "devops", "confidence": 0.61}, experiment="e1",
                   variant="candidate", user_id="u1")  # fmt: skip
    got = store.get_request(rid)
    assert got.routing == {"target": "devops", "confidence": 0.61}
    assert (got.adapter_version, got.variant, got.latency_ms) == (2, "candidate", 12.5)
    store.record_feedback(rid, "rating", 4)
    store.record_feedback(rid, "comparison", -1, payload={"alternative": "helm list"})
    store.record_feedback(rid, "correction", payload={"text": "kubectl get pods -A"})
    store.record_reward(rid, 0.75, "validator")
    pairs = store.feedback_with_requests(kinds=["comparison", "correction"])
    assert [fb.kind for _, fb in pairs] == ["comparison", "correction"]
    assert pairs[1][1].payload == {"text": "kubectl get pods -A"}
    assert pairs[0][0].prompt == "list pods"
    assert store.query_rewards(request_id=rid)[0].reward == 0.75
    assert (store.count("requests"), store.count("feedback"), store.count("rewards")) == (1, 3, 1)


def test_query_filters_and_stats(store):
    t0 = 1_000.0
    for i in range(6):
        rid = _request(store, ts=t0 + i, domain="api" if i % 2 else "ml", adapter_id=f"a{i % 2}")
        store.record_feedback(rid, "thumbs", -1 if i < 3 else 1)
        store.record_feedback(rid, "rating", 1 + i % 5)
    assert [r.ts for r in store.query_requests(domain="api")] == [t0 + 1, t0 + 3, t0 + 5]
    assert len(store.query_requests(since=t0 + 2, until=t0 + 5)) == 3
    assert len(store.query_requests(limit=2)) == 2
    stats = {s.adapter_id: s for s in store.adapter_stats()}
    # a0 got i=0,2,4: thumbs -1,-1,+1 ; ratings 1,3,5. a1 got i=1,3,5: -1,+1,+1 ; 2,4,1.
    assert stats["a0"].requests == 3 and stats["a0"].mean_rating == pytest.approx(3.0)
    assert stats["a0"].thumbs_down_rate == pytest.approx(2 / 3)
    assert stats["a1"].thumbs_down_rate == pytest.approx(1 / 3)
    assert stats["a1"].mean_rating == pytest.approx(7 / 3)


@pytest.mark.parametrize(
    ("kind", "value", "payload", "needle"),
    [
        ("rating", 7, None, "rating feedback needs `value` in [1, 5], got 7.0"),
        ("thumbs", 0, None, "+1 or -1"),
        ("accuracy", 1.5, None, "[0, 1]"),
        ("comparison", 1, {}, "payload.alternative"),
        ("correction", None, {"text": "  "}, "payload.text"),
        ("stars", 3, None, "`kind`"),
    ],
)
def test_feedback_validation_names_the_problem(store, kind, value, payload, needle):
    rid = _request(store)
    with pytest.raises(InvalidRequest, match="invalid FeedbackRecord") as err:
        store.record_feedback(rid, kind, value, payload=payload)
    assert needle in str(err.value)
    assert store.count("feedback") == 0


def test_unknown_request_and_bad_request_fields(store):
    with pytest.raises(NotFound, match="'missing'"):
        store.record_feedback("missing", "thumbs", 1)
    with pytest.raises(InvalidRequest, match="`latency_ms`.*got -3"):
        _request(store, latency_ms=-3)
    with pytest.raises(InvalidRequest, match="`variant`"):
        _request(store, variant="b")
    with pytest.raises(NotFound):
        store.get_request("nope")
    assert store.count("requests") == 0


def test_events_are_idempotent_by_key(store):
    first = store.record_event("promote", adapter_id="api", version=3, idempotency_key="cycle-7",
                               payload={"candidate": 0.81, "production": 0.74})  # fmt: skip
    again = store.record_event("promote", adapter_id="api", version=4, idempotency_key="cycle-7")
    assert again.id == first.id and again.version == 3
    store.record_event("rollback", adapter_id="api", version=2)
    events = store.query_events(adapter_id="api")
    assert [(e.kind, e.version) for e in events] == [("promote", 3), ("rollback", 2)]
    assert events[0].payload == {"candidate": 0.81, "production": 0.74}
    with pytest.raises(InvalidRequest, match="`kind`"):
        store.record_event("explode")


def test_migrations_apply_once_and_upgrade(store_url):
    s = FeedbackStore(store_url)
    assert s.schema_version() == schema.LATEST_VERSION
    assert schema.migrate(s.engine) == []  # reopening applies nothing
    added = []
    extra = schema.Migration(99, "test column", lambda conn: added.append(99))
    assert schema.migrate(s.engine, (*schema.MIGRATIONS, extra)) == [99]
    assert schema.migrate(s.engine, (*schema.MIGRATIONS, extra)) == [] and added == [99]
    assert s.schema_version() == 99
    names = {ix["name"] for ix in inspect(s.engine).get_indexes("requests")}
    assert "ix_requests_domain_ts" in names
    s.close()


def test_sqlite_uses_wal_and_full_sync(tmp_path):
    s = FeedbackStore(f"sqlite:///{tmp_path / 'f.db'}")
    with s.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == 2  # FULL
        assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
    s.close()


def test_url_resolution(tmp_path):
    cfg = load_config(overrides={"paths": {"home": str(tmp_path)}}, environ={})
    assert resolve_store_url(cfg, {}) == f"sqlite:///{tmp_path.resolve() / 'feedback.db'}"
    assert resolve_store_url(cfg, {"QLP_DB_URL": "postgresql://u@h/db"}) == "postgresql://u@h/db"
    cfg2 = load_config(overrides={"store": {"url": "sqlite:///x.db"}}, environ={})
    assert resolve_store_url(cfg2, {}) == "sqlite:///x.db"
    with pytest.raises(ConfigError, match="sqlite or postgresql"):
        FeedbackStore("mysql://u@h/db")
    with pytest.raises(ConfigError, match="not a database URL"):
        FeedbackStore("::nonsense")


_WRITER = textwrap.dedent(
    """
    import sys
    from qlp_ray.store.database import FeedbackStore
    store = FeedbackStore(sys.argv[1])
    i = 0
    while True:
        rid = store.record_request(model="base", prompt=f"p{i}" * 50, response="r" * 200)
        fid = store.record_feedback(rid, "thumbs", 1 if i % 2 else -1)
        sys.stdout.write(f"{rid} {fid}\\n")
        sys.stdout.flush()
        i += 1
    """
)


def test_acknowledged_rows_survive_sigkill(store_url):
    FeedbackStore(store_url).close()  # migrate before the race starts
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-c", _WRITER, store_url], stdout=subprocess.PIPE,
                            text=True, env=env)  # fmt: skip
    acked: list[tuple[str, int]] = []
    try:
        deadline = time.monotonic() + 60
        while len(acked) < 150 and time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            rid, fid = line.split()
            acked.append((rid, int(fid)))
        proc.send_signal(signal.SIGKILL)  # mid-stream: the writer is inside its loop
    finally:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        proc.wait(timeout=30)
        proc.stdout.close()
    assert proc.returncode == -signal.SIGKILL
    assert len(acked) == 150, "writer died before acknowledging 150 rows"
    s = FeedbackStore(store_url)
    stored = {r.id for r in s.query_requests()}
    assert {rid for rid, _ in acked} <= stored
    fb_ids = {f.id for f in s.query_feedback()}
    assert {fid for _, fid in acked} <= fb_ids
    assert s.count("requests") >= 150
    s.close()
