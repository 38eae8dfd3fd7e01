"""The feedback and trajectory store: requests, feedback, rewards, deployment/audit events.

SQLite by default (``<home>/feedback.db``, WAL journal, ``synchronous=FULL``: a row is
on disk before ``record_*`` returns, so nothing acknowledged is lost when the process
dies); PostgreSQL when ``QLP_DB_URL`` or ``store.url`` names one. Same schema on
both, created and upgraded by :mod:`qlp_ray.store.schema` migrations.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import Engine, and_, case, create_engine, event, func, or_, select
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, IntegrityError

from qlp_ray.core.errors import ConfigError, NotFound
from qlp_ray.store import schema
from qlp_ray.store.records import (
    EventRecord,
    FailureRecord,
    FeedbackRecord,
    RequestRecord,
    RewardRecord,
    build,
)

if TYPE_CHECKING:
    from qlp_ray.core.config import QLPConfig

logger = logging.getLogger(__name__)

DB_URL_ENV = "QLP_DB_URL"


def resolve_store_url(cfg: QLPConfig, environ: Mapping[str, str] | None = None) -> str:
    """``QLP_DB_URL`` > ``store.url`` > ``sqlite:///<home>/feedback.db``."""
    env = os.environ if environ is None else environ
    url = env.get(DB_URL_ENV) or cfg.store.url
    if not url:
        return f"sqlite:///{cfg.paths.root / 'feedback.db'}"
    return url


def _normalise_url(url: str) -> str:
    """Use the psycopg (v3) driver for bare ``postgresql://`` URLs."""
    try:
        parsed = make_url(url)
    except ArgumentError as exc:
        raise ConfigError(f"`store.url` is not a database URL: {url!r}") from exc
    if parsed.drivername in ("postgresql", "postgres"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    if parsed.get_backend_name() not in ("sqlite", "postgresql"):
        raise ConfigError(f"`store.url` must be sqlite or postgresql, got {parsed.drivername!r}")
    return parsed.render_as_string(hide_password=False)


@dataclass(frozen=True)
class AdapterStats:
    """Per (adapter, domain) analytics used to find weak areas."""

    adapter_id: str | None
    domain: str | None
    requests: int
    mean_rating: float | None
    thumbs_down_rate: float | None
    mean_accuracy: float | None
    mean_latency_ms: float | None


class FeedbackStore:
    """Typed access to the store. Thread-safe (one SQLAlchemy engine, short transactions)."""

    def __init__(self, url: str, *, synchronous: str = "FULL", busy_timeout_ms: int = 10000):
        self.url = _normalise_url(url)
        parsed = make_url(self.url)
        self.backend = parsed.get_backend_name()
        if self.backend == "sqlite" and parsed.database not in (None, "", ":memory:"):
            Path(parsed.database).expanduser().parent.mkdir(parents=True, exist_ok=True)
        self.engine: Engine = create_engine(self.url, pool_pre_ping=self.backend != "sqlite")
        if self.backend == "sqlite":
            _install_sqlite_pragmas(self.engine, synchronous, busy_timeout_ms)
        applied = schema.migrate(self.engine)
        if applied:
            logger.info("store %s migrated to version %d", self.safe_url, applied[-1])

    @classmethod
    def from_config(cls, cfg: QLPConfig, environ: Mapping[str, str] | None = None) -> FeedbackStore:
        return cls(
            resolve_store_url(cfg, environ),
            synchronous=cfg.store.sqlite_synchronous,
            busy_timeout_ms=cfg.store.busy_timeout_ms,
        )

    @property
    def safe_url(self) -> str:
        return make_url(self.url).render_as_string(hide_password=True)

    def schema_version(self) -> int:
        return schema.current_version(self.engine)

    def close(self) -> None:
        self.engine.dispose()

    def __enter__(self) -> FeedbackStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- writes ------------------------------------------------------------------------
    def record_request(self, record: RequestRecord | None = None, **fields: Any) -> str:
        """Insert one request (a record or its fields); return its id once committed."""
        rec = record if record is not None else build(RequestRecord, **fields)
        with self.engine.begin() as conn:
            conn.execute(schema.requests.insert().values(**rec.model_dump()))
        return rec.id

    def record_requests(self, records: Iterable[RequestRecord]) -> int:
        """Insert many requests in one transaction; return how many."""
        rows = [r.model_dump() for r in records]
        if rows:
            with self.engine.begin() as conn:
                conn.execute(schema.requests.insert(), rows)
        return len(rows)

    def record_log(self, records: Iterable[RequestRecord | FailureRecord]) -> int:
        """The request log's group commit: answered requests and A/B-assigned failures in
        one transaction (all or none); return how many rows."""
        recs = list(records)
        answered = [r.model_dump() for r in recs if isinstance(r, RequestRecord)]
        failed = [r.model_dump(exclude={"id"}) | {"request_id": r.id}
                  for r in recs if isinstance(r, FailureRecord)]  # fmt: skip
        if answered or failed:
            with self.engine.begin() as conn:
                if answered:
                    conn.execute(schema.requests.insert(), answered)
                if failed:
                    conn.execute(schema.experiment_failures.insert(), failed)
        return len(recs)

    def record_feedback(
        self,
        request_id: str,
        kind: str,
        value: float | None = None,
        *,
        caller: str | None = None,
        bound_only: bool = False,
        review: bool = False,
        **kw: Any,
    ) -> int:
        """Attach validated feedback to an existing request; return the feedback id.

        ``caller``: id of the API key posting it. The feedback is *trusted* when that is
        the key that made the request (both None: a store write with no keys involved).
        ``bound_only``: anything else is a 404, worded as for an unknown id (the HTTP
        route: nobody learns whether someone else's request exists). ``review``: a
        correction waits for a reviewer (``review_feedback``) before it is training data.
        """
        rec = build(FeedbackRecord, request_id=request_id, kind=kind, value=value,
                    caller=caller, **kw)  # fmt: skip
        with self.engine.begin() as conn:
            owner = self._require_request(conn, rec.request_id)
            trusted = owner == caller
            if bound_only and not trusted:
                raise NotFound(_unknown_request(rec.request_id))
            pending = "pending" if review else "accepted"
            rec = rec.model_copy(update={
                "trusted": trusted, "review": pending if rec.kind == "correction" else None,
            })  # fmt: skip
            row = rec.model_dump(exclude={"id"}) | {"trusted": int(trusted)}
            return int(conn.execute(schema.feedback.insert().values(**row)).inserted_primary_key[0])

    def corrections(self, review: str | None = "pending", limit: int = 100) -> list[tuple]:
        """Corrections (with their request) in review state ``review`` (None: any), oldest
        first: the review queue."""
        pairs = self.feedback_with_requests(kinds=["correction"], trusted_only=False)
        out = [(req, fb) for req, fb in pairs if review is None or fb.review == review]
        return out[:limit]

    def review_feedback(self, feedback_id: int, *, accept: bool, reviewer: str | None) -> Any:
        """Accept or reject a correction; the audit log records who. Returns the record."""
        f = schema.feedback
        decision = "accepted" if accept else "rejected"
        with self.engine.begin() as conn:
            row = conn.execute(select(f).where(f.c.id == feedback_id)).first()
            if row is None or row._mapping["kind"] != "correction":
                raise NotFound(f"no correction with id {feedback_id}")
            conn.execute(
                f.update().where(f.c.id == feedback_id).values(
                    review=decision, reviewed_by=reviewer, reviewed_at=time.time()
                )
            )  # fmt: skip
        self.record_event(
            "review", actor=reviewer,
            payload={"feedback_id": feedback_id, "request_id": row._mapping["request_id"],
                     "decision": decision, "trusted": bool(row._mapping["trusted"])},
        )  # fmt: skip
        with self.engine.connect() as conn:
            done = conn.execute(select(f).where(f.c.id == feedback_id)).one()
        return FeedbackRecord(**done._mapping)

    def record_reward(self, request_id: str, reward: float, source: str, **kw: Any) -> int:
        rec = build(RewardRecord, request_id=request_id, reward=reward, source=source, **kw)
        with self.engine.begin() as conn:
            self._require_request(conn, rec.request_id)
            row = rec.model_dump(exclude={"id"})
            return int(conn.execute(schema.rewards.insert().values(**row)).inserted_primary_key[0])

    def record_event(self, kind: str, **fields: Any) -> EventRecord:
        """Append an audit event. With an ``idempotency_key`` already present, the stored
        event is returned and nothing is written (safe to repeat after a restart)."""
        rec = build(EventRecord, kind=kind, **fields)
        if rec.idempotency_key is not None:
            existing = self.find_event(rec.idempotency_key)
            if existing is not None:
                return existing
        try:
            with self.engine.begin() as conn:
                row = rec.model_dump(exclude={"id"})
                new_id = conn.execute(schema.events.insert().values(**row)).inserted_primary_key[0]
        except IntegrityError:
            # Lost a race with another writer using the same key: theirs is the event.
            existing = self.find_event(rec.idempotency_key) if rec.idempotency_key else None
            if existing is None:
                raise
            return existing
        return rec.model_copy(update={"id": int(new_id)})

    @staticmethod
    def _require_request(conn: Any, request_id: str) -> str | None:
        """The caller of request ``request_id``; NotFound if there is no such request."""
        r = schema.requests
        found = conn.execute(select(r.c.id, r.c.caller).where(r.c.id == request_id)).first()
        if found is None:
            raise NotFound(_unknown_request(request_id))
        return found[1]

    # --- reads -------------------------------------------------------------------------
    def get_request(self, request_id: str) -> RequestRecord:
        with self.engine.connect() as conn:
            row = conn.execute(
                select(schema.requests).where(schema.requests.c.id == request_id)
            ).first()
        if row is None:
            raise NotFound(_unknown_request(request_id))
        return RequestRecord(**row._mapping)

    def query_requests(
        self,
        *,
        domain: str | None = None,
        adapter_id: str | None = None,
        experiment: str | None = None,
        since: float | None = None,
        until: float | None = None,
        limit: int | None = None,
    ) -> list[RequestRecord]:
        """Requests matching every given filter, oldest first."""
        t = schema.requests
        q = select(t).order_by(t.c.ts, t.c.id)
        for col, val in ((t.c.domain, domain), (t.c.adapter_id, adapter_id)):
            if val is not None:
                q = q.where(col == val)
        if experiment is not None:
            q = q.where(t.c.experiment == experiment)
        if since is not None:
            q = q.where(t.c.ts >= since)
        if until is not None:
            q = q.where(t.c.ts < until)
        if limit is not None:
            q = q.limit(limit)
        with self.engine.connect() as conn:
            return [RequestRecord(**r._mapping) for r in conn.execute(q)]

    def query_feedback(
        self,
        *,
        request_id: str | None = None,
        kinds: Iterable[str] | None = None,
        since: float | None = None,
        trusted_only: bool = False,
    ) -> list[FeedbackRecord]:
        """Feedback rows, oldest first; ``trusted_only``: what training and A/B promotion
        count (:func:`trusted_feedback`)."""
        t = schema.feedback
        q = select(t).order_by(t.c.id)
        if trusted_only:
            q = q.where(trusted_feedback())
        if request_id is not None:
            q = q.where(t.c.request_id == request_id)
        if kinds is not None:
            q = q.where(t.c.kind.in_(list(kinds)))
        if since is not None:
            q = q.where(t.c.ts >= since)
        with self.engine.connect() as conn:
            return [FeedbackRecord(**r._mapping) for r in conn.execute(q)]

    def feedback_with_requests(
        self,
        *,
        kinds: Iterable[str] | None = None,
        domain: str | None = None,
        experiment: str | None = None,
        trusted_only: bool = True,
    ) -> list[tuple[RequestRecord, FeedbackRecord]]:
        """Feedback joined to its request (for preference pairs and corrections).

        ``trusted_only`` (the default, what training and promotion read): only feedback
        from the key that made the request, and corrections only once accepted.
        """
        r, f = schema.requests, schema.feedback
        q = select(r, f.c.id.label("fb_id"), f.c.ts.label("fb_ts"), f.c.kind, f.c.value)
        q = q.add_columns(f.c.payload, f.c.user_id.label("fb_user_id"))
        q = q.add_columns(f.c.caller.label("fb_caller"), f.c.trusted, f.c.review)
        q = q.add_columns(f.c.reviewed_by, f.c.reviewed_at)
        q = q.join(f, f.c.request_id == r.c.id).order_by(f.c.id)
        if trusted_only:
            q = q.where(trusted_feedback())
        if kinds is not None:
            q = q.where(f.c.kind.in_(list(kinds)))
        if domain is not None:
            q = q.where(r.c.domain == domain)
        if experiment is not None:
            q = q.where(r.c.experiment == experiment)
        out = []
        with self.engine.connect() as conn:
            for row in conn.execute(q):
                m = row._mapping
                req = RequestRecord(**{c.name: m[c] for c in r.c})
                fb = FeedbackRecord(
                    id=m["fb_id"],
                    request_id=m[r.c.id],
                    ts=m["fb_ts"],
                    kind=m["kind"],
                    value=m["value"],
                    payload=m["payload"],
                    user_id=m["fb_user_id"],
                    caller=m["fb_caller"],
                    trusted=bool(m["trusted"]),
                    review=m["review"],
                    reviewed_by=m["reviewed_by"],
                    reviewed_at=m["reviewed_at"],
                )
                out.append((req, fb))
        return out

    def query_rewards(self, *, request_id: str | None = None) -> list[RewardRecord]:
        t = schema.rewards
        q = select(t).order_by(t.c.id)
        if request_id is not None:
            q = q.where(t.c.request_id == request_id)
        with self.engine.connect() as conn:
            return [RewardRecord(**r._mapping) for r in conn.execute(q)]

    def query_events(
        self,
        *,
        kinds: Iterable[str] | None = None,
        adapter_id: str | None = None,
        since: float | None = None,
    ) -> list[EventRecord]:
        """Audit events, oldest first."""
        t = schema.events
        q = select(t).order_by(t.c.id)
        if kinds is not None:
            q = q.where(t.c.kind.in_(list(kinds)))
        if adapter_id is not None:
            q = q.where(t.c.adapter_id == adapter_id)
        if since is not None:
            q = q.where(t.c.ts >= since)
        with self.engine.connect() as conn:
            return [EventRecord(**r._mapping) for r in conn.execute(q)]

    def find_event(self, idempotency_key: str) -> EventRecord | None:
        t = schema.events
        with self.engine.connect() as conn:
            row = conn.execute(select(t).where(t.c.idempotency_key == idempotency_key)).first()
        return None if row is None else EventRecord(**row._mapping)

    def count(self, table: str) -> int:
        """Row count of ``requests``, ``feedback``, ``rewards`` or ``events``."""
        tables = {t.name: t for t in (schema.requests, schema.feedback, schema.rewards)}
        tables["events"] = schema.events
        if table not in tables:
            raise NotFound(f"no store table {table!r}; have {sorted(tables)}")
        with self.engine.connect() as conn:
            return int(conn.execute(select(func.count()).select_from(tables[table])).scalar_one())

    def adapter_stats(self, *, since: float | None = None) -> list[AdapterStats]:
        """Per (adapter, domain): request count, mean rating, thumbs-down rate, accuracy."""
        r, f = schema.requests, schema.feedback
        base = select(r.c.adapter_id, r.c.domain, func.count().label("n"))
        base = base.add_columns(func.avg(r.c.latency_ms).label("lat"))
        if since is not None:
            base = base.where(r.c.ts >= since)
        base = base.group_by(r.c.adapter_id, r.c.domain)

        def _feedback_avg(kind: str, expr: Any) -> Any:
            q = select(r.c.adapter_id, r.c.domain, func.avg(expr).label("v"))
            q = q.join(f, f.c.request_id == r.c.id).where(f.c.kind == kind, trusted_feedback())
            if since is not None:
                q = q.where(r.c.ts >= since)
            return q.group_by(r.c.adapter_id, r.c.domain)

        down = case((f.c.value < 0, 1.0), else_=0.0)
        with self.engine.connect() as conn:
            counts = {(a, d): (n, lat) for a, d, n, lat in conn.execute(base)}
            ratings = {(a, d): v for a, d, v in conn.execute(_feedback_avg("rating", f.c.value))}
            thumbs = {(a, d): v for a, d, v in conn.execute(_feedback_avg("thumbs", down))}
            acc = {(a, d): v for a, d, v in conn.execute(_feedback_avg("accuracy", f.c.value))}
        return [
            AdapterStats(
                a, d, int(n), ratings.get((a, d)), thumbs.get((a, d)), acc.get((a, d)), lat
            )
            for (a, d), (n, lat) in sorted(
                counts.items(), key=lambda kv: (str(kv[0][0]), str(kv[0][1]))
            )
        ]


def _unknown_request(request_id: str) -> str:
    return f"no request with id {request_id!r} in the feedback store"


def trusted_feedback() -> Any:
    """The SQL condition of feedback that training and promotion may use: posted by the
    key that made the request; a correction also accepted by a reviewer."""
    f = schema.feedback
    return and_(f.c.trusted == 1, or_(f.c.kind != "correction", f.c.review == "accepted"))


def _install_sqlite_pragmas(engine: Engine, synchronous: str, busy_timeout_ms: int) -> None:
    if synchronous not in ("NORMAL", "FULL", "EXTRA"):
        raise ConfigError(
            f"`store.sqlite_synchronous` must be NORMAL, FULL or EXTRA, got {synchronous!r}"
        )

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute(f"PRAGMA synchronous={synchronous}")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute(f"PRAGMA busy_timeout={int(busy_timeout_ms)}")
        cur.close()
