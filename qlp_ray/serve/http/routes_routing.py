"""Admin HTTP routes of the router: look at and rebuild the routing table.

``GET /v1/admin/routes``           the routing table of a router replica: routable adapters
                                   (domain, version), skipped ones with the reason, mode,
                                   threshold, top_k, the fallback target, the registry
                                   generation it was built from
``POST /v1/admin/routes/refresh``  rebuild the table from the registry now; returns it
``POST /v1/admin/routes/evaluate`` ``{"rows": [{"text"|"instruction", "domain"}, ...]}``
                                   (a labelled file's rows) → the live router's decisions
                                   scored: accuracy, macro-F1, coverage, per-domain recall,
                                   the confusion matrix (:mod:`qlp_ray.route.live_eval`);
                                   ``computed_on`` says where the rows were embedded and
                                   searched (device actors per ``router.offload``, or the
                                   router with the reason)

The table also follows the registry by itself (its generation marker is checked on the
request path and on every ``GET`` of the table, as routing does), so the refresh route is
for operators and scripts that want certainty.
Both routes take the admin key when ``serve.admin_key`` is set.
"""

# No `from __future__ import annotations`: FastAPI must see the real types.
from typing import Any

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, ConfigDict, Field

from qlp_ray.route.live_eval import labelled_rows, score
from qlp_ray.serve.http.auth import require_admin
from qlp_ray.serve.http.errors import await_remote

router = APIRouter(prefix="/v1/admin/routes", dependencies=[Depends(require_admin)])
MAX_EVAL_ROWS = 5000


class LabelledRows(BaseModel):
    model_config = ConfigDict(extra="forbid")

    rows: list[Any] = Field(min_length=1, max_length=MAX_EVAL_ROWS,
                            description="Labelled rows: {text | instruction, domain}.")  # fmt: skip


def _with_fallback(gateway: Any, table: dict[str, Any]) -> dict[str, Any]:
    external = gateway.external
    if external is None:
        target = {"kind": "base", "model": gateway.base_model}
    else:  # the endpoint and model, never the key
        target = {"kind": "external", "model": external.model, "endpoint": external.endpoint}
    return {"object": "routing_table", **table, "fallback_target": target}


@router.get("")
async def routing_table(request: Request) -> dict[str, Any]:
    """The routing table as one router replica holds it."""
    gateway = request.app.state.gateway
    return _with_fallback(gateway, await await_remote(gateway.router.table.remote()))


@router.post("/refresh")
async def refresh_routes(request: Request) -> dict[str, Any]:
    """Rebuild the routing table from the registry and return it."""
    gateway = request.app.state.gateway
    table = await await_remote(gateway.router.refresh.remote())
    await gateway.models.adapters(fresh=True)  # explicit model names follow too
    return _with_fallback(gateway, table)


@router.post("/evaluate")
async def evaluate_routes(body: LabelledRows, request: Request) -> dict[str, Any]:
    """Route every row's text with the live router's table and score it against the row's
    domain. The rows are batch work: embedded (and searched) on the scheduler's device
    actors per ``router.offload``, else in the router."""
    gateway = request.app.state.gateway
    texts, truth = labelled_rows(body.rows)
    routed = await await_remote(gateway.router.route_offline.remote(texts))
    table = await await_remote(gateway.router.table.remote())
    scored = score(truth, routed["decisions"], float(table["threshold"]))
    return {"object": "routing.evaluation", "mode": table.get("mode"), **scored,
            "computed_on": routed["computed_on"]}  # fmt: skip


__all__ = ["router"]
