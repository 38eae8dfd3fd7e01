"""Issue 22: several processes opening one fresh store at once (pods starting together)
migrate it exactly once, with no error, on PostgreSQL (advisory lock) and SQLite (file lock)."""

from __future__ import annotations

import multiprocessing as mp

import pytest
from sqlalchemy import create_engine, func, select

from qlp_ray.store import schema
from tests.helpers.postgres import PostgresUnavailable, postgres_database

N = 4


def _open(url: str, barrier, results) -> None:
    """A process opening the store the moment every other one does."""
    from qlp_ray.store.database import FeedbackStore

    barrier.wait(60)
    try:
        with FeedbackStore(url) as store:
            results.put(("ok", store.schema_version()))
    except Exception as exc:  # reported to the test, which fails naming it
        results.put(("error", f"{type(exc).__name__}: {exc}"))


def _open_concurrently(url: str) -> list[tuple[str, object]]:
    ctx = mp.get_context("spawn")
    barrier, results = ctx.Barrier(N), ctx.Queue()
    procs = [ctx.Process(target=_open, args=(url, barrier, results)) for _ in range(N)]
    for p in procs:
        p.start()
    out = [results.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(30)
        assert p.exitcode == 0
    return out


def _check(url: str) -> None:
    out = _open_concurrently(url)
    assert out == [("ok", schema.LATEST_VERSION)] * N, out
    engine = create_engine(url)
    with engine.connect() as conn:
        t = schema.migrations_table
        versions = conn.execute(select(t.c.version).order_by(t.c.version)).scalars().all()
        assert versions == [m.version for m in schema.MIGRATIONS]  # each row once
        rows = conn.execute(select(func.count()).select_from(t)).scalar_one()
        assert rows == len(schema.MIGRATIONS)
    engine.dispose()


def test_concurrent_first_start_on_postgresql() -> None:
    try:
        with postgres_database() as url:
            _check(url)
    except PostgresUnavailable as exc:
        pytest.skip(f"PostgreSQL not available: {exc}")


def test_concurrent_first_start_on_sqlite(tmp_path) -> None:
    _check(f"sqlite:///{tmp_path / 'feedback.db'}")
