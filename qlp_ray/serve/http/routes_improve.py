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

from fastapi import APIRouter, Depends, Query, Request

from qlp_ray.serve.http.auth import check_api_key, require_admin
from qlp_ray.serve.http.improve_api import FeedbackBody, improve_router

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


@router.post("/v1/feedback")
async def post_feedback(body: FeedbackBody, request: Request) -> Any:
    gateway = request.app.state.gateway
    check_api_key(request, gateway.cfg.serve.api_key)
    await _recorder(request).committed(body.request_id)  # its row may be queued still
    endpoint = _bound_endpoint(request, "/v1/feedback")
    deadline = time.monotonic() + gateway.cfg.store.feedback_wait_s
    pause = _FIRST_RETRY_S
    while True:
        result = await asyncio.to_thread(endpoint, body)
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
