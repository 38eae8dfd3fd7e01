"""The gateway's A/B hook: assign a variant after routing, record the outcome before replying.

:meth:`GatewayExperiments.apply` runs right after the gateway resolved a request's target:
when a running experiment takes the request it returns the target of the assigned variant
(pinned ``adapter@version``, an adapter's current version, or a stack) labelled with the
experiment and variant, counts ``qlp_experiment_assignments_total`` and leaves a pending
outcome on ``request.state``. An answered request reaches the store through the request
log (which carries the experiment and variant); :class:`ExperimentOutcomeMiddleware` (pure
ASGI, outermost) sees the final status of every request and logs an assigned request that
failed (status, latency since assignment) through the same request log writer, before its
error response goes out: successes and failures reach the store on one path (unbiased
under crashes).
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Any

from qlp_ray.core.config import QLPConfig
from qlp_ray.core.errors import QLPError
from qlp_ray.experiments.ab import Assignment, load_experiment_file
from qlp_ray.experiments.runtime import ExperimentRuntime, RequestFacts
from qlp_ray.experiments.store import ExperimentStore
from qlp_ray.serve.telemetry import metrics
from qlp_ray.store.database import FeedbackStore

logger = logging.getLogger(__name__)

STATE_KEY = "qlp_experiment"


@dataclass
class PendingOutcome:
    """An assigned request waiting for its response status."""

    hook: GatewayExperiments
    assignment: Assignment
    request_id: str
    user: str | None
    t0: float

    async def finish(self, status: int) -> None:
        """Persist a failure (an answered request is in the request log already); a store
        failure is logged and counted, never raised."""
        if status < 400:
            return
        latency_s = time.perf_counter() - self.t0
        log = getattr(self.hook, "log_failure", None)  # the gateway's request log
        try:
            if log is not None:
                a = self.assignment
                state = await log(self.request_id, a.experiment_id, a.variant,
                                  status=status, latency_s=latency_s, user=self.user)  # fmt: skip
                if state == "failed":
                    self.hook.store_errors += 1
                return
            await asyncio.to_thread(
                self.hook.runtime.record_failure, self.request_id, self.assignment,
                status=status, latency_s=latency_s, user=self.user,
            )  # fmt: skip
        except Exception:  # the request is answered; losing its outcome must not fail it
            self.hook.store_errors += 1
            logger.exception("could not record the experiment failure of %s", self.request_id)


class GatewayExperiments:
    """One gateway replica's experiments: the runtime plus the async glue around it."""

    def __init__(self, cfg: QLPConfig, store: FeedbackStore, log_failure: Any = None) -> None:
        """``log_failure``: the request log's ``RequestRecorder.record_failure`` (None: each
        failure is committed on its own)."""
        self.log_failure = log_failure
        ec = cfg.experiments
        self.enabled = ec.enabled
        self.runtime = ExperimentRuntime(
            ExperimentStore(store.engine), seed=ec.seed, refresh_interval_s=ec.refresh_interval_s
        )
        specs = [s for path in ec.files for s in load_experiment_file(path)]
        self.runtime.start_from(specs)
        self.store_errors = 0
        self.unresolved = 0
        self._pinned: dict[str, tuple[str | None, int | None]] = {}
        self._refresh_task: asyncio.Task | None = None

    def _maybe_refresh(self) -> None:
        """Re-read the store in the background when the in-memory view is stale."""
        if not self.runtime.stale() or (self._refresh_task and not self._refresh_task.done()):
            return
        self._refresh_task = asyncio.get_running_loop().create_task(self._refresh())

    async def _refresh(self) -> None:
        try:
            await asyncio.to_thread(self.runtime.refresh)
        except Exception:
            logger.exception("could not refresh experiments from the store")

    async def _variant_target(self, gateway: Any, model: str) -> tuple[str | None, int | None]:
        """(adapter or stack key, version) serving ``model``; pinned versions are cached."""
        cached = self._pinned.get(model)
        if cached is not None:
            return cached
        target = await gateway.models.resolve(model, "")
        resolved = (target.adapter, target.version)
        if "@" in model and "+" not in model:  # 'adapter@version' never changes
            self._pinned[model] = resolved
        return resolved

    async def apply(self, gateway: Any, request: Any, body: Any, target: Any) -> Any:
        """``target``, or the target of the variant a running experiment assigns."""
        if not self.enabled:
            return target
        self._maybe_refresh()
        if not self.runtime.running:
            return target
        user = (body.user or None) and body.user[:128]
        facts = RequestFacts(
            model=body.model,
            routed=target.routed,
            adapter=target.adapter,
            domain=target.domain,
            user=user,
            metadata=getattr(body, "metadata", None),
        )
        assignment = self.runtime.assign(facts)
        if assignment is None:
            return target
        try:
            adapter, version = await self._variant_target(gateway, assignment.target)
        except QLPError as exc:  # e.g. the variant's adapter was retired after the start
            self.unresolved += 1
            logger.warning(
                "experiment %s variant %s (%s) cannot serve, request keeps %s: %s",
                assignment.experiment_id, assignment.variant, assignment.target,
                target.adapter, exc,
            )  # fmt: skip
            return target
        chosen = type(target)(adapter, version, target.domain, target.confidence, target.routed)
        chosen.experiment, chosen.variant = assignment.experiment_id, assignment.variant
        pending = PendingOutcome(
            self, assignment, request.state.request_id, user, time.perf_counter()
        )
        setattr(request.state, STATE_KEY, pending)
        metrics.record_assignment(assignment.experiment_id, assignment.variant)
        return chosen


class ExperimentOutcomeMiddleware:
    """Pure ASGI middleware: records the pending experiment outcome at response start."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        state = scope.setdefault("state", {})  # request.state: shared by every inner layer

        async def send_after_recording(message: dict) -> None:
            if message["type"] == "http.response.start":
                pending = state.pop(STATE_KEY, None)
                if pending is not None:
                    await pending.finish(int(message["status"]))
            await send(message)

        await self.app(scope, receive, send_after_recording)
