"""Admin HTTP routes of the compositor: composition-cache stats, prefetch, hot-swap.

``GET /v1/admin/cache``      composition-cache counters (hit ratio, evictions, ...),
                              prefetch queue and pre-warm errors of a compositor replica
``POST /v1/admin/prefetch``  ``{"models": [...], "priority": int}`` → 202 at once; the
                              compositor (every replica) loads/composes them in the
                              background
``POST /v1/admin/swap``      ``{"old": "a@1", "new": "a@2", "warm": bool}`` → switch
                              adapter ``a`` to version 2 atomically

The routes run in the gateway (included into its FastAPI app); they reach the gateway
through ``app.state.gateway`` and resolve models through its
:class:`~qlp_ray.serve.model_table.ModelTable`. When ``serve.admin_key`` is set every admin
route needs ``Authorization: Bearer <admin_key>`` (:func:`~qlp_ray.serve.http.auth.require_admin`).

A swap verifies the new version (signature, files, base model), with ``warm`` loads it
and pre-composes every cached stack that held the old version, then switches: the
registry's current pointer and the gateway's adapter table change together, so each
request resolves wholly to the old or to the new version. Requests already on the old
version finish on it (its lease is freed when they are done); cached stacks holding the
old version are invalidated, and not cached again when a request resolved before the
switch composes one afterwards. With ``warm=false`` the new version is loaded by the first
request that needs it.

With ``serve.compositor_replicas > 1`` a handle call would reach one replica only, so the
warm-up and the invalidation go through the swap board (``serve/swap_board.py``): every
replica does them and acknowledges, and the switch waits for the warm-ups of all replicas
(``serve.swap_warm_timeout_s`` at most; a replica's error refuses the swap). The answer
says how many replicas acknowledged each step, and on which Ray nodes they run.
"""

# No `from __future__ import annotations`: FastAPI must see the real types.
import asyncio
import logging
import time
from typing import Any

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, ConfigDict, Field

from qlp_ray.core.errors import (
    InvalidRequest,
)
from qlp_ray.models.composition import is_stack, parse_multiplex_id
from qlp_ray.serve.http.auth import require_admin
from qlp_ray.serve.http.errors import await_remote
from qlp_ray.serve.swap_board import broadcast, raise_first_error
from qlp_ray.serve.swap_board_actor import make_swap_board

logger = logging.getLogger(__name__)


def _gateway(request: Request) -> Any:
    return request.app.state.gateway


router = APIRouter(prefix="/v1/admin", dependencies=[Depends(require_admin)])


# -- wire models --------------------------------------------------------------------
class PrefetchRequest(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid")

    models: list[str] = Field(min_length=1, max_length=64, description="Adapters or stacks.")
    priority: int = Field(0, ge=-100, le=100, description="Higher runs first.")


class SwapRequest(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid")

    old: str = Field(min_length=1, description="'adapter' or 'adapter@version' now serving.")
    new: str = Field(min_length=1, description="'adapter@version' to serve from now on.")
    warm: bool = Field(True, description="Pre-load / pre-compose before switching.")


# -- routes -------------------------------------------------------------------------
@router.get("/cache")
async def cache_stats(request: Request) -> dict[str, Any]:
    """Composition-cache statistics of one compositor replica."""
    return await await_remote(_gateway(request).compositor.cache_stats.remote())


@router.post("/prefetch", status_code=202)
async def prefetch(body: PrefetchRequest, request: Request) -> dict[str, Any]:
    """Queue adapters/stacks for background loading; answers before they are loaded."""
    gateway = _gateway(request)
    ids = [await gateway.models.versioned_id(m) for m in body.models]
    if gateway.cfg.serve.compositor_replicas == 1:
        ack = await await_remote(gateway.compositor.prefetch.remote(ids, body.priority))
        return {"status": "queued", **ack, "acknowledged": 1}
    # every replica queues them (each answers as soon as they are queued, not loaded)
    _, acknowledged, _ = await _on_compositors(
        gateway, "prefetch", model_ids=ids, priority=body.priority
    )
    return {"status": "queued", "queued": ids, "priority": body.priority,
            "acknowledged": acknowledged}  # fmt: skip


def _parse_swap(body: SwapRequest) -> tuple[str, int | None, int]:

    adapter_id, old_version = parse_multiplex_id(body.old)
    new_id, new_version = parse_multiplex_id(body.new)
    if is_stack(body.old) or is_stack(body.new):
        raise InvalidRequest("swap takes adapter versions, not stacks", param="new")
    if new_id != adapter_id:
        raise InvalidRequest(
            f"swap switches versions of one adapter: old is {adapter_id!r}, new is {new_id!r}",
            param="new",
        )
    if new_version is None:
        raise InvalidRequest("`new` must name a version: 'adapter@version'", param="new")
    return adapter_id, old_version, new_version


@router.post("/swap")
async def swap(body: SwapRequest, request: Request) -> dict[str, Any]:
    """Switch an adapter to another registered version (see the module docstring)."""
    gateway = _gateway(request)
    adapter_id, old_version, new_version = _parse_swap(body)
    t0 = time.perf_counter()
    current = await asyncio.to_thread(gateway.registry.get, adapter_id)  # 404 when unknown
    if old_version is not None and old_version != int(current.version):
        raise InvalidRequest(
            f"`old` is {body.old!r} but {adapter_id!r} serves v{current.version}", param="old"
        )
    old_version = int(current.version)
    if new_version == old_version:
        raise InvalidRequest(f"{adapter_id!r} already serves v{new_version}", param="new")
    old_id, new_id = f"{adapter_id}@{old_version}", f"{adapter_id}@{new_version}"
    verify = asyncio.to_thread(
        gateway.registry.verify, adapter_id, new_version, expected_base_model=gateway.base_model
    )
    replicas = gateway.cfg.serve.compositor_replicas
    warmed: list[str] = []
    acknowledged = {"warm": 0, "invalidate": 0}
    nodes: dict[str, list[str]] = {"warm": [], "invalidate": []}
    if body.warm:  # verify (here) and pre-load/pre-compose (compositor) side by side
        both = await asyncio.gather(
            verify,
            _on_compositors(gateway, "warm", old_id=old_id, new_id=new_id),
            return_exceptions=True,  # both finish: no warm-up left running unobserved
        )
        for outcome in both:  # the verification's error first
            if isinstance(outcome, BaseException):
                raise outcome
        record, (warmed, acknowledged["warm"], nodes["warm"]) = both
    else:
        record = await verify
    warm_ms = (time.perf_counter() - t0) * 1000
    # the switch: durable pointer, then the gateway's table in one assignment
    await asyncio.to_thread(gateway.registry.set_current, adapter_id, new_version)
    gateway.models.switch(adapter_id, record)
    switched_ms = (time.perf_counter() - t0) * 1000
    invalidated, acknowledged["invalidate"], nodes["invalidate"] = await _on_compositors(
        gateway, "invalidate", adapter_id=adapter_id, version=old_version, current=new_version
    )
    await await_remote(gateway.router.refresh.remote())  # routed ('auto') requests follow too
    logger.info(
        "swapped %s v%d -> v%d (%s) in %.1f ms",
        adapter_id, old_version, new_version, "warm" if body.warm else "cold", switched_ms,
    )  # fmt: skip
    return {
        "adapter": adapter_id,
        "old": old_id,
        "new": new_id,
        "warm": body.warm,
        "warmed": warmed,
        "invalidated": invalidated,
        "warm_ms": round(warm_ms, 2),
        "switched_ms": round(switched_ms, 2),
        "compositor_replicas": replicas,
        "acknowledged": acknowledged,
        "acknowledged_nodes": nodes,
    }


async def _on_compositors(gateway: Any, kind: str, **args: Any) -> tuple[list[str], int, list[str]]:
    """``warm`` or ``invalidate`` (one handle call with one replica) or ``prefetch`` (only
    called with several) on the compositor, through the swap board with several replicas;
    returns what was done (in order, once each), how many replicas acknowledged and the Ray
    nodes they run on (through the board only)."""

    s = gateway.cfg.serve
    if s.compositor_replicas == 1:
        method = getattr(gateway.compositor, kind)
        return await await_remote(method.remote(**args)), 1, []
    board = await asyncio.to_thread(make_swap_board, gateway.cfg)
    wait = {"timeout_s": s.swap_warm_timeout_s, "poll_s": s.swap_poll_s}
    acks = await broadcast(board, kind, replicas=s.compositor_replicas, **wait, **args)
    raise_first_error(acks)
    done = dict.fromkeys(key for ack in acks for key in ack.result)
    return list(done), len(acks), sorted({ack.node for ack in acks if ack.node})


__all__ = ["router"]
