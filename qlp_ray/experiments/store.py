"""Durable state of A/B experiments in the feedback store: definitions and outcomes.

``experiments`` holds one row per definition (its spec as JSON, ``running`` or
``stopped``). An assigned request that was answered is its row in the request log
(``requests.experiment/variant``, latency, user: written before the response anyway, so
the success path costs no extra write); one that failed after assignment is a row in
``experiment_failures`` (HTTP status, latency). Feedback on answered requests lives in
``feedback``. :meth:`ExperimentStore.variant_stats` joins them into the per-variant
counters of the analysis and the bandit, so every gateway replica (and a restarted one)
sees the same numbers.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine, and_, case, func, or_, select, update
from sqlalchemy.exc import IntegrityError

from qlp_ray.core.errors import Conflict, NotFound
from qlp_ray.experiments.ab import ExperimentSpec, VariantStats
from qlp_ray.store import schema

RUNNING, STOPPED = "running", "stopped"
SUCCESS_FEEDBACK_KINDS = ("thumbs", "rating")


@dataclass(frozen=True)
class ExperimentRow:
    """A stored experiment definition and its life-cycle state."""

    spec: ExperimentSpec
    status: str
    created_at: float
    stopped_at: float | None


def _row(m: Any) -> ExperimentRow:
    spec = ExperimentSpec.model_validate(m["spec"])
    return ExperimentRow(spec, m["status"], m["created_at"], m["stopped_at"])


class ExperimentStore:
    """Experiment definitions and outcomes on the feedback store's engine (migrated)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    # --- definitions -------------------------------------------------------------------
    def create(self, spec: ExperimentSpec, *, now: float | None = None) -> ExperimentRow:
        """Persist a new running experiment; ``Conflict`` (409) when the id is taken."""
        t = schema.experiments
        row = {
            "id": spec.id,
            "spec": spec.model_dump(mode="json"),
            "status": RUNNING,
            "created_at": time.time() if now is None else now,
            "stopped_at": None,
        }
        try:
            with self.engine.begin() as conn:
                conn.execute(t.insert().values(**row))
        except IntegrityError:
            raise Conflict(
                f"experiment {spec.id!r} already exists (ids are never reused, even after a "
                "stop); pick another id",
                param="id",
            ) from None
        return _row(row)

    def ensure(self, spec: ExperimentSpec) -> bool:
        """Create ``spec`` unless an experiment with its id exists (any state); True if created."""
        try:
            self.create(spec)
        except Conflict:
            return False
        return True

    def get(self, experiment_id: str) -> ExperimentRow:
        t = schema.experiments
        with self.engine.connect() as conn:
            m = conn.execute(select(t).where(t.c.id == experiment_id)).mappings().first()
        if m is None:
            raise NotFound(
                f"no experiment {experiment_id!r}; GET /v1/admin/experiments lists them",
                param="id",
            )
        return _row(m)

    def list(self, *, status: str | None = None) -> list[ExperimentRow]:
        """Experiments, oldest first (only those in ``status`` when given)."""
        t = schema.experiments
        q = select(t).order_by(t.c.created_at, t.c.id)
        if status is not None:
            q = q.where(t.c.status == status)
        with self.engine.connect() as conn:
            return [_row(m) for m in conn.execute(q).mappings()]

    def stop(self, experiment_id: str, *, now: float | None = None) -> ExperimentRow:
        """Mark an experiment stopped (idempotent: a stopped one keeps its stop time)."""
        t = schema.experiments
        with self.engine.begin() as conn:
            conn.execute(
                update(t)
                .where(t.c.id == experiment_id, t.c.status == RUNNING)
                .values(status=STOPPED, stopped_at=time.time() if now is None else now)
            )
        return self.get(experiment_id)

    # --- outcomes ----------------------------------------------------------------------
    def record_failure(
        self,
        request_id: str,
        experiment: str,
        variant: str,
        *,
        status: int,
        error: str | None = None,
        latency_ms: float | None = None,
        user_id: str | None = None,
        ts: float | None = None,
    ) -> None:
        """One assigned request that failed (4xx/5xx after assignment), committed."""
        row = {
            "request_id": request_id,
            "experiment": experiment,
            "variant": variant,
            "ts": time.time() if ts is None else ts,
            "status": status,
            "error": error,
            "latency_ms": latency_ms,
            "user_id": user_id,
        }
        try:
            with self.engine.begin() as conn:
                conn.execute(schema.experiment_failures.insert().values(**row))
        except IntegrityError:
            raise Conflict(f"request {request_id!r} already has a recorded failure") from None

    def variant_stats(self, spec: ExperimentSpec) -> dict[str, VariantStats]:
        """Per-variant counters of ``spec`` from the request log, failures and feedback.

        ``impressions``: answered + failed assigned requests; ``errors``: the failed ones;
        latency: mean over answered requests. Success: with ``spec.success == "served"`` an
        answered request; with ``"feedback"`` an answered request whose latest thumbs/rating
        feedback is a thumbs up or a rating >= ``spec.success_rating`` (a thumbs down or a
        lower rating fails, as does an error; unrated requests are not outcomes yet).
        ``feedback_sum/count``: the latest rating (1-5) per rated request.
        """
        r, x, f = schema.requests, schema.experiment_failures, schema.feedback
        mine = r.c.experiment == spec.id
        answered = select(
            r.c.variant,
            func.count().label("n"),
            func.sum(r.c.latency_ms).label("lat_sum"),
            func.count(r.c.latency_ms).label("lat_n"),
        )
        answered = answered.where(mine).group_by(r.c.variant)
        failed = select(x.c.variant, func.count()).where(x.c.experiment == spec.id)
        failed = failed.group_by(x.c.variant)

        def latest(kinds: tuple[str, ...], *cols: Any) -> Any:
            ids = select(r.c.id).where(mine)
            last = select(f.c.request_id, func.max(f.c.id).label("fid"))
            last = last.where(f.c.kind.in_(kinds), f.c.request_id.in_(ids), f.c.trusted == 1)
            last = last.group_by(f.c.request_id).subquery()
            src = r.join(last, last.c.request_id == r.c.id).join(f, f.c.id == last.c.fid)
            return select(r.c.variant, *cols).select_from(src).group_by(r.c.variant)

        good = or_(
            and_(f.c.kind == "thumbs", f.c.value > 0),
            and_(f.c.kind == "rating", f.c.value >= spec.success_rating),
        )
        judged = latest(SUCCESS_FEEDBACK_KINDS, func.count(), func.sum(case((good, 1), else_=0)))
        rated = latest(("rating",), func.count(), func.sum(f.c.value))
        with self.engine.connect() as conn:
            served = {row[0]: row[1:] for row in conn.execute(answered)}
            errors = {row[0]: int(row[1]) for row in conn.execute(failed)}
            verdicts = {row[0]: (int(row[1]), int(row[2] or 0)) for row in conn.execute(judged)}
            ratings = {row[0]: (int(row[1]), float(row[2] or 0.0)) for row in conn.execute(rated)}
        out = {}
        for v in spec.variants:
            n_ok, lat_sum, lat_n = served.get(v.name, (0, None, 0))
            n_err = errors.get(v.name, 0)
            judged_n, good_n = verdicts.get(v.name, (0, 0))
            if spec.success == "served":
                successes, failures = int(n_ok), n_err
            else:
                successes, failures = good_n, judged_n - good_n + n_err
            rating_n, rating_sum = ratings.get(v.name, (0, 0.0))
            out[v.name] = VariantStats(
                impressions=int(n_ok) + n_err,
                successes=successes,
                failures=failures,
                errors=n_err,
                latency_sum=float(lat_sum or 0.0) / 1000.0,
                latency_count=int(lat_n or 0),
                feedback_sum=rating_sum,
                feedback_count=rating_n,
            )
        return out
