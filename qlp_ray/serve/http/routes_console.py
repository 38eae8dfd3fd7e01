"""Admin routes the console reads (admin key): analytics over time, the improve loop's
decisions, devices and placements.

``GET /v1/admin/analytics/timeseries``  ``?bucket=minute|hour|day&since=&until=&adapter=``
                                        per adapter and bucket: requests, p50/p95/p99 ms,
                                        success rate of rated requests, mean rating, cost
                                        and savings, from the store's request log (every
                                        replica; :mod:`qlp_ray.serve.telemetry.timeseries`)
``GET /v1/admin/improve/decisions``     ``?domain=&last=`` the improve loop's steps from the
                                        audit log (train, evaluate, experiment, decision)
                                        with the numbers that decided them
``GET /v1/admin/devices``               the hardware scheduler's devices and live placements;
                                        503 saying so when no scheduler runs
"""

# No `from __future__ import annotations`: FastAPI must see the real types.
import asyncio
import logging
import time
from datetime import UTC, datetime
from typing import Any

from fastapi import APIRouter, Depends, Query, Request

from qlp_ray.core.errors import Overloaded
from qlp_ray.serve.http.auth import require_admin
from qlp_ray.serve.http.errors import await_remote
from qlp_ray.serve.telemetry.cost import PriceTable, price_entry
from qlp_ray.serve.telemetry.timeseries import series, window
from qlp_ray.store.database import FeedbackStore

logger = logging.getLogger(__name__)
router = APIRouter(prefix="/v1/admin", dependencies=[Depends(require_admin)])
IMPROVE_KINDS = ("train", "evaluate", "experiment", "decision")
MAX_EPOCH_S = 1e11  # beyond any real request time (and within SQLite's INTEGER)


async def _store(request: Request) -> FeedbackStore:
    """The gateway's feedback store (its queued request rows written first)."""
    gateway = request.app.state.gateway
    recorder = getattr(gateway, "recorder", None)
    if recorder is not None:
        await recorder.flush()
        return recorder.store
    store = getattr(request.app.state, "console_store", None)
    if store is None:
        store = request.app.state.console_store = FeedbackStore.from_config(gateway.cfg)
    return store


@router.get("/analytics/timeseries")
async def analytics_timeseries(
    request: Request,
    bucket: str = "minute",
    since: float | None = Query(None, ge=0, le=MAX_EPOCH_S, description="Epoch seconds."),
    until: float | None = Query(None, ge=0, le=MAX_EPOCH_S, description="Epoch seconds."),
    adapter: str | None = None,
) -> dict[str, Any]:
    cfg = request.app.state.gateway.cfg
    start, end = window(bucket, since, until, time.time())
    store = await _store(request)
    prices = PriceTable.load()

    def read() -> list[dict[str, Any]]:
        reqs = store.query_requests(since=start, until=end)
        if adapter is not None:
            reqs = [r for r in reqs if r.model == adapter]
        # the feedback A/B promotion counts: a caller rating someone else's request
        # does not move anyone's chart
        fb = store.query_feedback(kinds=("thumbs", "rating"), since=start, trusted_only=True)
        return series(reqs, fb, bucket=bucket, prices=prices,
                      external_price_entry=price_entry(cfg))  # fmt: skip

    points = await asyncio.to_thread(read)
    return {"object": "analytics.timeseries", "bucket": bucket, "since": start, "until": end,
            "currency": prices.currency, "reference_model": prices.reference_model,
            "data": points}  # fmt: skip


def decision_row(event: Any) -> dict[str, Any]:
    """One audit event of the improve loop, flattened for a table."""
    p = dict(event.payload or {})
    return {
        "id": event.id,
        "time": datetime.fromtimestamp(event.ts, UTC).strftime("%Y-%m-%d %H:%M:%S"),
        "kind": event.kind,
        "domain": event.adapter_id,
        "version": event.version,
        "outcome": p.get("outcome") or p.get("status") or ("done" if event.kind in
                                                           ("train", "evaluate") else None),
        "method": p.get("method"),
        "reason": p.get("reason"),
        "actor": event.actor,
        "numbers": p,
    }  # fmt: skip


@router.get("/improve/decisions")
async def improve_decisions(
    request: Request, domain: str | None = None, last: int = Query(100, ge=1, le=10_000)
) -> dict[str, Any]:
    store = await _store(request)
    events = await asyncio.to_thread(store.query_events, kinds=IMPROVE_KINDS, adapter_id=domain)
    return {"object": "list", "data": [decision_row(e) for e in events[-last:]]}


def _scheduler(cfg: Any) -> Any:
    import ray  # lazy: a replica has it loaded

    from actors.launch import get_scheduler

    if not ray.is_initialized():
        raise Overloaded("the hardware scheduler is not reachable: this gateway does not run "
                         "in a Ray cluster")  # fmt: skip
    try:
        return get_scheduler(cfg.hardware)
    except ValueError as exc:
        raise Overloaded(
            f"the hardware scheduler is not running (no 'qlp-scheduler' actor in namespace "
            f"{cfg.hardware.namespace!r}); start it with actors.launch.start_hardware()"
        ) from exc


@router.get("/devices")
async def devices(request: Request) -> dict[str, Any]:
    cfg = request.app.state.gateway.cfg
    scheduler = await asyncio.to_thread(_scheduler, cfg)
    rows = await await_remote(scheduler.devices.remote())
    live = await await_remote(scheduler.placements.remote())
    return {"object": "devices", "namespace": cfg.hardware.namespace, "devices": rows,
            "placements": live}  # fmt: skip


__all__ = ["decision_row", "router"]
