"""A/B experiments in the serving path: which requests join, which variant serves them,
and what is persisted. Pure Python on the feedback store, no Ray.

Who joins (:func:`joins`): an explicit request whose ``model`` is listed in the experiment's
``applies_to``; a routed request (``model=auto``, not a fallback) when ``applies_to`` is
empty, lists ``auto`` or lists the adapter the router chose. Then the ``domains`` filter
(the routed or registered domain), the ``metadata`` filter (request ``metadata``; the key
``user`` matches the request's ``user``) and the start/end window must all pass.

Each gateway replica holds an :class:`ExperimentRuntime`: the running experiments in
memory (assignment takes a few microseconds and touches no database), re-read from the
store every ``refresh_interval_s`` together with the bandit's success counts, so
experiments created or stopped on one replica reach the others and survive restarts.
Outcomes: an answered request is logged by the gateway's request recorder with its
experiment and variant; a failed one is recorded here (:meth:`record_failure`).
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from qlp_ray.experiments.ab import Assignment, Experiment, ExperimentSpec
from qlp_ray.experiments.store import RUNNING, ExperimentRow, ExperimentStore

logger = logging.getLogger(__name__)

AUTO = "auto"


@dataclass(frozen=True)
class RequestFacts:
    """What the gateway knows about a request when it asks for a variant."""

    model: str  # as the client sent it
    routed: bool  # model=auto: the router chose ``adapter``
    adapter: str | None  # the resolved target (None: base model / router fallback)
    domain: str | None
    user: str | None = None
    metadata: Mapping[str, str] | None = None


def joins(spec: ExperimentSpec, facts: RequestFacts) -> bool:
    """Whether ``facts`` is in the audience of ``spec`` (the time window aside)."""
    if facts.routed:
        if facts.adapter is None:  # a low-confidence fallback keeps its fallback target
            return False
        wanted = spec.applies_to
        if wanted and AUTO not in wanted and facts.adapter not in wanted:
            return False
    elif facts.model not in spec.applies_to:
        return False
    if spec.domains and facts.domain not in spec.domains:
        return False
    for key, value in spec.metadata.items():
        have = facts.user if key == "user" else (facts.metadata or {}).get(key)
        if have != value:
            return False
    return True


def status_of(row: ExperimentRow, now: datetime | None = None) -> str:
    """``stopped``, ``scheduled`` (before start), ``ended`` (after end) or ``running``."""
    if row.status != RUNNING:
        return row.status
    now = now or datetime.now(UTC)
    if row.spec.start is not None and now < row.spec.start:
        return "scheduled"
    if row.spec.end is not None and now >= row.spec.end:
        return "ended"
    return RUNNING


def describe(row: ExperimentRow, now: datetime | None = None) -> dict[str, Any]:
    """The definition and life-cycle state of a stored experiment (JSON-ready)."""
    return {
        "object": "experiment",
        "id": row.spec.id,
        "status": status_of(row, now),
        "created_at": row.created_at,
        "stopped_at": row.stopped_at,
        "spec": row.spec.model_dump(mode="json"),
    }


class ExperimentRuntime:
    """The running experiments of one gateway replica, kept in step with the store."""

    def __init__(
        self,
        store: ExperimentStore,
        *,
        seed: int | None = None,
        refresh_interval_s: float = 2.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.store = store
        self.refresh_interval_s = refresh_interval_s
        self._clock = clock
        self._rng = random.Random(seed)
        self._running: tuple[Experiment, ...] = ()  # replaced whole, never mutated
        self._refreshed_at = float("-inf")
        # one writer of _running at a time, so a refresh that read the store before a
        # create/stop committed cannot overwrite the view taken after it
        self._lock = threading.Lock()

    # --- definitions -------------------------------------------------------------------
    def start_from(self, specs: Iterable[ExperimentSpec]) -> list[str]:
        """Persist config-file experiments whose id is new; the ids created."""
        created = [s.id for s in specs if self.store.ensure(s)]
        if created:
            logger.info("experiments from config started: %s", ", ".join(created))
        self.refresh()
        return created

    def create(self, spec: ExperimentSpec) -> dict[str, Any]:
        """Persist a new experiment (409 on a taken id) and start assigning at once."""
        row = self.store.create(spec)
        self.refresh()
        logger.info("experiment %s created with %d variants", spec.id, len(spec.variants))
        return describe(row)

    def stop(self, experiment_id: str) -> dict[str, Any]:
        """Stop assigning (this replica at once, the others at their next refresh)."""
        row = self.store.stop(experiment_id)
        with self._lock:
            self._running = tuple(e for e in self._running if e.spec.id != experiment_id)
        logger.info("experiment %s stopped", experiment_id)
        return describe(row)

    def list(self) -> list[dict[str, Any]]:
        return [describe(r) for r in self.store.list()]

    def analysis(self, experiment_id: str) -> dict[str, Any]:
        """Per-variant counts from the store, chi-square test, intervals, winner, bandit."""
        row = self.store.get(experiment_id)
        exp = Experiment(row.spec)
        exp.stats = self.store.variant_stats(row.spec)
        report = exp.analyze()
        report.update(describe(row))
        report["active"] = report["status"] == RUNNING
        return report

    # --- serving path ------------------------------------------------------------------
    @property
    def running(self) -> tuple[Experiment, ...]:
        return self._running

    def stale(self) -> bool:
        return self._clock() - self._refreshed_at >= self.refresh_interval_s

    def refresh(self) -> None:
        """Re-read running definitions (and bandit counts) from the store."""
        with self._lock:
            rows = self.store.list(status=RUNNING)
            current = {e.spec.id: e for e in self._running}
            running = []
            for row in rows:
                exp = current.get(row.spec.id)
                if exp is None or exp.spec != row.spec:
                    exp = Experiment(row.spec, random.Random(self._rng.random()))
                if row.spec.is_bandit:  # the posterior the draws use: counts of all replicas
                    exp.stats = self.store.variant_stats(row.spec)
                running.append(exp)
            self._running = tuple(running)
            self._refreshed_at = self._clock()

    def assign(self, facts: RequestFacts, now: datetime | None = None) -> Assignment | None:
        """The variant of the first running experiment ``facts`` joins, else None."""
        running = self._running
        if not running:
            return None
        for exp in running:
            if joins(exp.spec, facts) and exp.active(now):
                return exp.assign(facts.user)
        return None

    def record_failure(
        self,
        request_id: str,
        assignment: Assignment,
        *,
        status: int,
        latency_s: float | None,
        user: str | None = None,
    ) -> None:
        """Persist an assigned request that failed (answered ones are in the request log)."""
        self.store.record_failure(
            request_id,
            assignment.experiment_id,
            assignment.variant,
            status=status,
            error=f"http_{status}",
            latency_ms=None if latency_s is None else round(latency_s * 1000, 3),
            user_id=user,
        )
