"""HTTP routes of the improvement loop, as a FastAPI router the Serve app mounts:

- ``POST /v1/feedback``: thumbs / rating / comparison / correction / accuracy on a
  served request (400 for a bad body, 404 for an unknown request id);
- ``GET /v1/admin/label-queue?k=10&method=entropy``: the active-learning queue.

Errors use the OpenAI shape ``{"error": {message, type, param, code}}``. The app
that mounts the router is responsible for auth (``/v1/admin`` needs the admin key).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from fastapi import APIRouter, Query
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from qlp_ray.core.errors import QLPError
from qlp_ray.data.label_queue import next_to_label

if TYPE_CHECKING:
    import numpy as np

    from qlp_ray.core.config import ActiveLearningConfig
    from qlp_ray.store.database import FeedbackStore


class FeedbackBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    request_id: str = Field(max_length=64)
    kind: str = Field(max_length=32)
    value: float | None = None
    payload: dict[str, Any] | None = None
    user: str | None = Field(None, max_length=128)


def _error(exc: QLPError) -> JSONResponse:
    body = {"message": exc.message, "type": exc.error_type, "param": exc.param, "code": exc.code}
    return JSONResponse({"error": body}, status_code=exc.http_status)


def store_feedback(
    store: FeedbackStore, body: FeedbackBody, caller: str | None = None, *, bound: bool = False
) -> Any:
    """Store ``body`` as feedback of key ``caller``: its dict, or an error response.
    ``bound``: only on the caller's own requests (others' are a 404 like unknown ids) and
    corrections wait for a reviewer."""
    try:
        fid = store.record_feedback(
            body.request_id, body.kind, body.value, payload=body.payload, user_id=body.user,
            caller=caller, bound_only=bound, review=bound,
        )  # fmt: skip
    except QLPError as exc:
        return _error(exc)
    out = {"id": fid, "object": "feedback", "request_id": body.request_id}
    if body.kind == "correction":
        out["review"] = "pending" if bound else "accepted"
    return out


def improve_router(
    store: FeedbackStore,
    embed: Callable[[list[str]], np.ndarray],
    al_cfg: ActiveLearningConfig,
) -> APIRouter:
    """The routes above, bound to one store and embedder."""
    router = APIRouter()

    @router.post("/v1/feedback")
    def post_feedback(body: FeedbackBody) -> Any:
        return store_feedback(store, body)

    @router.get("/v1/admin/label-queue")
    def label_queue(k: int = Query(10, ge=1, le=1000), method: str | None = None) -> Any:

        try:
            items = next_to_label(store, embed, al_cfg, k=k, method=method)
        except QLPError as exc:
            return _error(exc)
        return {"object": "list", "data": [it.to_dict() for it in items]}

    return router
