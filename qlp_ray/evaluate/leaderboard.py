"""Persistent evaluation leaderboard in SQLite (no pickle: metrics are JSON text).

One row per evaluation run; :meth:`Leaderboard.top` ranks the best run of each
adapter by quality score (or any recorded metric).
"""

from __future__ import annotations

import json
import logging
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from qlp_ray.core.config import QLPConfig
from qlp_ray.core.errors import InvalidRequest
from qlp_ray.evaluate.report import LOWER_IS_BETTER, EvaluationReport

logger = logging.getLogger(__name__)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS evaluations (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    adapter_id TEXT NOT NULL,
    domain TEXT NOT NULL DEFAULT '',
    dataset TEXT NOT NULL DEFAULT '',
    score REAL,
    grade TEXT NOT NULL,
    passed INTEGER NOT NULL,
    metrics TEXT NOT NULL,
    created_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS evaluations_domain ON evaluations(domain);
"""


@dataclass(frozen=True)
class LeaderboardEntry:
    id: int
    adapter_id: str
    domain: str
    dataset: str
    score: float | None
    grade: str
    passed: bool
    metrics: dict[str, float]
    created_at: float


def default_leaderboard_path(cfg: QLPConfig) -> Path:
    return cfg.evaluation.leaderboard_path or cfg.paths.root / "evaluations" / "leaderboard.db"


class Leaderboard:
    """SQLite-backed leaderboard (WAL mode, one connection per call)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._connect() as conn:
            conn.executescript(_SCHEMA)

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        conn = sqlite3.connect(self.path, timeout=10)
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.row_factory = sqlite3.Row
            yield conn
            conn.commit()
        finally:
            conn.close()

    def record(
        self,
        adapter_id: str,
        report: EvaluationReport,
        *,
        domain: str = "",
        dataset: str = "",
    ) -> int:
        """Store one evaluation; returns its row id."""
        if not adapter_id:
            raise InvalidRequest("adapter_id must not be empty", param="adapter_id")
        with self._connect() as conn:
            cur = conn.execute(
                "INSERT INTO evaluations (adapter_id, domain, dataset, score, grade, passed,"
                " metrics, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    adapter_id,
                    domain,
                    dataset,
                    report.score,
                    report.grade,
                    int(report.passed),
                    json.dumps(report.metrics, sort_keys=True),
                    time.time(),
                ),
            )
            row_id = int(cur.lastrowid)
        logger.info("leaderboard: recorded %s (grade %s) as #%d", adapter_id, report.grade, row_id)
        return row_id

    def entries(self, *, domain: str | None = None) -> list[LeaderboardEntry]:
        """Every run, oldest first."""
        query, args = "SELECT * FROM evaluations", ()
        if domain is not None:
            query, args = query + " WHERE domain = ?", (domain,)
        with self._connect() as conn:
            rows = conn.execute(query + " ORDER BY id", args).fetchall()
        return [_entry(r) for r in rows]

    def top(
        self, *, domain: str | None = None, metric: str = "score", limit: int = 10
    ) -> list[LeaderboardEntry]:
        """Best run per adapter, ranked by ``metric`` (``score`` or a metric name).

        Runs without the metric are left out; lower-is-better metrics such as
        perplexity rank ascending.
        """
        if limit < 1:
            raise InvalidRequest(f"limit must be >= 1, got {limit}", param="limit")
        lower = metric in LOWER_IS_BETTER

        def value(e: LeaderboardEntry) -> float | None:
            return e.score if metric == "score" else e.metrics.get(metric)

        best: dict[str, LeaderboardEntry] = {}
        for e in self.entries(domain=domain):
            v = value(e)
            if v is None:
                continue
            cur = best.get(e.adapter_id)
            if cur is None or (v < value(cur) if lower else v > value(cur)):
                best[e.adapter_id] = e
        ranked = sorted(best.values(), key=lambda e: value(e), reverse=not lower)
        return ranked[:limit]


def _entry(row: sqlite3.Row) -> LeaderboardEntry:
    metrics: dict[str, Any] = json.loads(row["metrics"])
    return LeaderboardEntry(
        id=row["id"],
        adapter_id=row["adapter_id"],
        domain=row["domain"],
        dataset=row["dataset"],
        score=row["score"],
        grade=row["grade"],
        passed=bool(row["passed"]),
        metrics=metrics,
        created_at=row["created_at"],
    )


__all__ = ["Leaderboard", "LeaderboardEntry", "default_leaderboard_path"]
