"""Improvement-loop HTTP routes in the gateway: feedback, label queue, analytics.

``POST /v1/feedback`` and ``GET /v1/admin/label-queue`` are the routes of
:func:`qlp_ray.serve.http.improve_api.improve_router`, bound to the gateway's store when the
gateway starts (Serve freezes the FastAPI app at import time, so this router dispatches
to that bound router's endpoints). ``GET /v1/admin/analytics`` reports per-adapter
statistics and cost since the gateway replica started.

Feedback may reach a different gateway replica than the request it names, and that
replica commits its request rows a few milliseconds after the reply: an id not in the
store yet is therefore looked up again for up to ``store.feedback_wait_s`` before the 404.
"""

# No `from __future__ import annotations`: FastAPI must see the real types.
import asyncio
import time
from typing import Any

from fastapi import APIRouter, Depends, Path, Query, Request

from qlp_ray.serve.http.auth import caller_of, check_api_key, require_admin, require_reviewer
from qlp_ray.serve.http.improve_api import FeedbackBody, improve_router, store_feedback
from qlp_ray.serve.http.limits import PerKeyRate

router = APIRouter()


def _recorder(request: Request) -> Any:
    return request.app.state.gateway.recorder


def _bound_endpoint(request: Request, path: str) -> Any:
    """The endpoint of ``improve_router`` (bound once per gateway) serving ``path``."""
    state = request.app.state
    bound = getattr(state, "improve_routes", None)
    if bound is None:
        rec = state.gateway.recorder
        api = improve_router(rec.store, rec.embed, state.gateway.cfg.active_learning)
        bound = state.improve_routes = {r.path: r.endpoint for r in api.routes}
    return bound[path]


_FIRST_RETRY_S = 0.01  # then doubling, up to _MAX_RETRY_S between lookups
_MAX_RETRY_S = 0.2


def _feedback_rate(request: Request) -> PerKeyRate:
    state = request.app.state
    rate = getattr(state, "feedback_rate", None)
    if rate is None:
        rate = state.feedback_rate = PerKeyRate(state.gateway.cfg.serve.feedback_per_minute)
    return rate


@router.post("/v1/feedback")
async def post_feedback(body: FeedbackBody, request: Request) -> Any:
    """Feedback on one of the caller's own requests (same API key; with no keys configured,
    whoever holds the server-chosen request id). 404 for unknown and for others' requests
    alike; a correction waits for review (``/v1/admin/corrections``)."""
    gateway = request.app.state.gateway
    caller = check_api_key(request)
    client = request.client.host if request.client else "?"
    _feedback_rate(request).take(caller.key_id or f"addr:{client}")
    store = _recorder(request).store
    await _recorder(request).committed(body.request_id)  # its row may be queued still
    deadline = time.monotonic() + gateway.cfg.store.feedback_wait_s
    pause = _FIRST_RETRY_S
    while True:
        result = await asyncio.to_thread(store_feedback, store, body, caller.key_id, bound=True)
        unknown_id = getattr(result, "status_code", None) == 404
        left = deadline - time.monotonic()
        if not unknown_id or left <= 0:
            break
        await asyncio.sleep(min(pause, left))  # another replica may be committing the row
        pause = min(pause * 2, _MAX_RETRY_S)
    if isinstance(result, dict):  # stored: mirror it into the analytics
        await asyncio.to_thread(
            _recorder(request).record_feedback, body.request_id, body.kind, body.value
        )
    return result


@router.get("/v1/admin/corrections", dependencies=[Depends(require_reviewer)])
async def corrections(
    request: Request,
    review: str = Query("pending", pattern="^(pending|accepted|rejected|any)$"),
    limit: int = Query(100, ge=1, le=1000),
) -> Any:
    """The review queue: corrections and the requests they correct (reviewer or admin)."""
    store = _recorder(request).store
    wanted = None if review == "any" else review
    pairs = await asyncio.to_thread(store.corrections, wanted, limit)
    data = [
        {
            "id": fb.id, "request_id": req.id, "prompt": req.prompt, "response": req.response,
            "correction": (fb.payload or {}).get("text"), "caller": fb.caller,
            "trusted": fb.trusted, "review": fb.review, "reviewed_by": fb.reviewed_by,
        }
        for req, fb in pairs
    ]  # fmt: skip
    return {"object": "list", "data": data}


async def _review(request: Request, feedback_id: int, accept: bool) -> Any:
    store = _recorder(request).store
    reviewer = caller_of(request).key_id
    fb = await asyncio.to_thread(
        store.review_feedback, feedback_id, accept=accept, reviewer=reviewer
    )
    return {"id": fb.id, "object": "correction", "review": fb.review, "reviewed_by": reviewer}


_FEEDBACK_ID = Path(ge=1, le=2**62)


@router.post("/v1/admin/corrections/{feedback_id}/accept", dependencies=[Depends(require_reviewer)])
async def accept_correction(request: Request, feedback_id: int = _FEEDBACK_ID) -> Any:
    """The correction becomes training data (only if its key made the request)."""
    return await _review(request, feedback_id, True)


@router.post("/v1/admin/corrections/{feedback_id}/reject", dependencies=[Depends(require_reviewer)])
async def reject_correction(request: Request, feedback_id: int = _FEEDBACK_ID) -> Any:
    return await _review(request, feedback_id, False)


@router.get("/v1/admin/label-queue", dependencies=[Depends(require_admin)])
async def label_queue(
    request: Request, k: int = Query(10, ge=1, le=1000), method: str | None = None
) -> Any:
    endpoint = _bound_endpoint(request, "/v1/admin/label-queue")
    await _recorder(request).flush()  # rank the requests answered so far
    return await asyncio.to_thread(endpoint, k=k, method=method)


@router.get("/v1/admin/analytics", dependencies=[Depends(require_admin)])
async def analytics(request: Request) -> Any:
    await _recorder(request).flush()  # store_errors counts the rows written so far
    return _recorder(request).report()
