"""Tables of the feedback and trajectory store, and their versioned migrations.

One SQLAlchemy Core schema serves SQLite and PostgreSQL. Migrations are plain
functions applied in order; ``qlp_schema_migrations`` records which ran, so opening
a store twice (or from two processes) never applies one twice.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from sqlalchemy import (
    JSON,
    Column,
    Connection,
    Engine,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    inspect,
    select,
)

logger = logging.getLogger(__name__)

metadata = MetaData()
MIGRATION_LOCK_KEY = 0x716C705F6D6967  # "qlp_mig": the advisory lock migrations take

migrations_table = Table(
    "qlp_schema_migrations",
    metadata,
    Column("version", Integer, primary_key=True, autoincrement=False),
    Column("name", String(128), nullable=False),
    Column("applied_at", Float, nullable=False),
)

requests = Table(
    "requests",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("ts", Float, nullable=False),
    Column("model", String(256), nullable=False),
    Column("adapter_id", String(256)),
    Column("adapter_version", Integer),
    Column("domain", String(64)),
    Column("prompt", Text, nullable=False),
    Column("response", Text, nullable=False),
    Column("latency_ms", Float),
    Column("prompt_tokens", Integer),
    Column("completion_tokens", Integer),
    Column("routing", JSON),
    Column("experiment", String(128)),
    Column("variant", String(128)),
    Column("user_id", String(128)),
    Column("caller", String(64)),  # id of the API key that made the request (None: no key)
)

feedback = Table(
    "feedback",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("request_id", String(64), ForeignKey("requests.id"), nullable=False),
    Column("ts", Float, nullable=False),
    Column("kind", String(32), nullable=False),
    Column("value", Float),
    Column("payload", JSON),
    Column("user_id", String(128)),
    Column("caller", String(64)),  # id of the API key that posted it
    # 1 when posted by the key that made the request (only these count for training and
    # promotion); corrections additionally need review == "accepted"
    Column("trusted", Integer, nullable=False, server_default="0"),
    Column("review", String(16)),  # corrections: pending | accepted | rejected
    Column("reviewed_by", String(64)),
    Column("reviewed_at", Float),
)

rewards = Table(
    "rewards",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("request_id", String(64), ForeignKey("requests.id"), nullable=False),
    Column("ts", Float, nullable=False),
    Column("reward", Float, nullable=False),
    Column("source", String(128), nullable=False),
    Column("payload", JSON),
)

events = Table(
    "events",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("ts", Float, nullable=False),
    Column("kind", String(32), nullable=False),
    Column("adapter_id", String(256)),
    Column("version", Integer),
    Column("actor", String(128)),
    Column("payload", JSON),
    Column("idempotency_key", String(256)),
    UniqueConstraint("idempotency_key", name="uq_events_idempotency_key"),
)

experiments = Table(
    "experiments",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("spec", JSON, nullable=False),
    Column("status", String(16), nullable=False),  # running | stopped
    Column("created_at", Float, nullable=False),
    Column("stopped_at", Float),
)

experiment_failures = Table(
    "experiment_failures",
    metadata,
    Column("request_id", String(64), primary_key=True),
    Column("experiment", String(64), nullable=False),
    Column("variant", String(64), nullable=False),
    Column("ts", Float, nullable=False),
    Column("status", Integer, nullable=False),
    Column("error", String(128)),
    Column("latency_ms", Float),
    Column("user_id", String(128)),
    Index("ix_experiment_failures_variant", "experiment", "variant"),
)

leases = Table(
    "leases",
    metadata,
    Column("name", String(128), primary_key=True),  # e.g. improve:<domain>
    Column("owner", String(256), nullable=False),
    Column("acquired_at", Float, nullable=False),
    Column("renewed_at", Float, nullable=False),
    Column("expires_at", Float, nullable=False),
)

_INDEXES = (
    Index("ix_requests_ts", requests.c.ts),
    Index("ix_requests_domain_ts", requests.c.domain, requests.c.ts),
    Index("ix_requests_adapter", requests.c.adapter_id, requests.c.adapter_version),
    Index("ix_requests_experiment", requests.c.experiment, requests.c.variant),
    Index("ix_feedback_request", feedback.c.request_id),
    Index("ix_feedback_kind_ts", feedback.c.kind, feedback.c.ts),
    Index("ix_rewards_request", rewards.c.request_id),
    Index("ix_events_kind_adapter", events.c.kind, events.c.adapter_id),
)

_V1_TABLES = (requests, feedback, rewards, events)


@dataclass(frozen=True)
class Migration:
    """One schema step: ``apply`` runs inside the migration's transaction."""

    version: int
    name: str
    apply: Callable[[Connection], None]


def _v1_initial(conn: Connection) -> None:
    metadata.create_all(conn, tables=list(_V1_TABLES))


def _v2_indexes(conn: Connection) -> None:
    for index in _INDEXES:
        index.create(conn, checkfirst=True)


def _v3_experiments(conn: Connection) -> None:
    metadata.create_all(conn, tables=[experiments, experiment_failures])  # with their index


_V4_COLUMNS = (
    (requests, requests.c.caller),
    (feedback, feedback.c.caller),
    (feedback, feedback.c.trusted),
    (feedback, feedback.c.review),
    (feedback, feedback.c.reviewed_by),
    (feedback, feedback.c.reviewed_at),
)


def _v4_trust(conn: Connection) -> None:
    """Callers of requests and feedback, trust and review of feedback. Feedback stored
    before this has no caller to check: it stays untrusted (trusted = 0)."""
    for table, col in _V4_COLUMNS:
        present = {c["name"] for c in inspect(conn).get_columns(table.name)}
        if col.name in present:  # a fresh database got it from the current tables in v1
            continue
        ddl = col.type.compile(dialect=conn.dialect)
        default = f" DEFAULT {col.server_default.arg}" if col.server_default is not None else ""
        null = " NOT NULL" if not col.nullable else ""
        conn.exec_driver_sql(f"ALTER TABLE {table.name} ADD COLUMN {col.name} {ddl}{default}{null}")
    conn.exec_driver_sql("CREATE INDEX IF NOT EXISTS ix_feedback_review ON feedback (review)")


def _v5_leases(conn: Connection) -> None:
    metadata.create_all(conn, tables=[leases])


MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "initial tables: requests, feedback, rewards, events", _v1_initial),
    Migration(2, "query indexes", _v2_indexes),
    Migration(3, "A/B experiments: definitions and failed requests", _v3_experiments),
    Migration(4, "callers of requests and feedback; trusted and reviewed feedback", _v4_trust),
    Migration(5, "leases: one orchestrator round per domain at a time", _v5_leases),
)
LATEST_VERSION = MIGRATIONS[-1].version


def current_version(engine: Engine) -> int:
    """Highest applied migration (0 for an empty database)."""
    if not inspect(engine).has_table(migrations_table.name):
        return 0
    with engine.connect() as conn:
        rows = conn.execute(select(migrations_table.c.version)).scalars().all()
    return max(rows, default=0)


def _applied(engine: Engine) -> set[int]:
    if not inspect(engine).has_table(migrations_table.name):
        return set()
    with engine.connect() as conn:
        return set(conn.execute(select(migrations_table.c.version)).scalars().all())


@contextlib.contextmanager
def migration_lock(engine: Engine) -> Iterator[None]:
    """One migrating process at a time: a PostgreSQL session advisory lock (released when
    the holder's connection ends, also when its process dies), or for SQLite an exclusive
    ``flock`` on ``<database>.migrate.lock`` (SQLite's DDL is not transactional)."""
    if engine.dialect.name == "postgresql":
        with engine.connect() as conn:
            conn.exec_driver_sql(f"SELECT pg_advisory_lock({MIGRATION_LOCK_KEY})")
            conn.commit()
            try:
                yield
            finally:
                conn.exec_driver_sql(f"SELECT pg_advisory_unlock({MIGRATION_LOCK_KEY})")
                conn.commit()
        return
    database = engine.url.database
    if engine.dialect.name != "sqlite" or database in (None, "", ":memory:"):
        yield  # one process only
        return
    with open(f"{database}.migrate.lock", "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def migrate(engine: Engine, migrations: tuple[Migration, ...] = MIGRATIONS) -> list[int]:
    """Apply pending migrations in order, each in its own transaction; return those applied.

    Processes opening one fresh store at once (pods starting together) take turns under
    :func:`migration_lock`: the first applies, the others find every version recorded."""
    versions = [m.version for m in migrations]
    if versions != sorted(set(versions)):
        raise ValueError(f"migration versions must be strictly increasing, got {versions}")
    if set(versions) <= _applied(engine):
        return []  # the common case: up to date, no lock taken
    with migration_lock(engine):
        metadata.create_all(engine, tables=[migrations_table])
        done = _applied(engine)
        applied: list[int] = []
        for migration in migrations:
            if migration.version in done:
                continue
            with engine.begin() as conn:
                logger.info("applying store migration %d: %s", migration.version, migration.name)
                migration.apply(conn)
                conn.execute(
                    migrations_table.insert().values(
                        version=migration.version, name=migration.name, applied_at=time.time()
                    )
                )
            applied.append(migration.version)
    return applied
