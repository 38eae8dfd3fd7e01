"""Admin HTTP routes of the registry: adapter versions, verification, promote, rollback,
and the audit log (every sign / verify / promote / rollback / improve decision).

``GET  /v1/admin/adapters``                    every adapter with all its versions: signed
                                               (the signature really verifies), the current
                                               one, retired, and each version's lineage
                                               (method, data hash, metrics, training config,
                                               run, created_at)
``POST /v1/admin/adapters/{id}/verify``        ``{"version"}`` → full verification (signature,
                                               files, base model); 424 names what is wrong
``POST /v1/admin/adapters/{id}/promote``       ``{"version", "reason"}`` → verified, then made
                                               current (an older one is recorded as a rollback)
``POST /v1/admin/adapters/{id}/rollback``      ``{"version", "reason"}`` → an explicit, audited
                                               rollback to an older verified version
``GET  /v1/admin/audit``                       ``?adapter=&kind=&last=`` audit events
``POST /v1/admin/keys/{key_id}/revoke``        stop trusting a retired signing key (as
                                               ``qlp keys revoke``): its adapters are refused
                                               (403 ``adapter_revoked``) and every compositor
                                               replica evicts them before the answer

The same operations as ``qlp adapters`` and ``qlp improve promote|rollback|audit``; the
gateway's model table follows the change at once (the routing table by its generation).
"""

# No `from __future__ import annotations`: FastAPI must see the real types.
import asyncio
from typing import Any

from fastapi import APIRouter, Depends, Query, Request
from pydantic import BaseModel, ConfigDict, Field

from qlp_ray.core.errors import InvalidRequest, NotFound
from qlp_ray.models.base import base_model_id
from qlp_ray.registry.audit import audit_for
from qlp_ray.registry.keyring import revoke_key
from qlp_ray.registry.store import Registry
from qlp_ray.serve.http.auth import require_admin
from qlp_ray.serve.http.errors import await_remote
from qlp_ray.serve.swap_board import broadcast, raise_first_error
from qlp_ray.serve.swap_board_actor import make_swap_board

router = APIRouter(prefix="/v1/admin", dependencies=[Depends(require_admin)])
LINEAGE_KEYS = ("created_at", "method", "data_hash", "data_file", "heldout_hash", "metrics",
                "train_config", "run", "parent", "verdict", "source")  # fmt: skip


class VersionBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    version: int = Field(ge=1, description="The adapter version.")
    reason: str = Field("", max_length=500, description="Recorded in the audit log.")


def _registry(request: Request) -> Registry:
    return Registry(request.app.state.gateway.cfg)


def adapters_listing(registry: Registry) -> list[dict[str, Any]]:
    """Every adapter id with all its versions (newest first) and lineage."""
    by_id: dict[str, dict[str, Any]] = {}
    for rec in registry.list(all_versions=True):
        entry = by_id.setdefault(rec.adapter_id, {
            "id": rec.adapter_id, "domain": rec.domain, "versions": [],
            "current_version": registry.storage.read_pointer(rec.adapter_id),
            "retired": registry.storage.is_retired(rec.adapter_id),
        })  # fmt: skip
        version = {"version": rec.version, "signed": rec.signed, "problem": rec.problem,
                   "base_model": rec.base_model, "domain": rec.domain,
                   "current": rec.version == entry["current_version"]}  # fmt: skip
        version.update({k: rec.metadata[k] for k in LINEAGE_KEYS if k in rec.metadata})
        entry["versions"].append(version)
    for entry in by_id.values():
        entry["versions"].sort(key=lambda v: v["version"], reverse=True)
    return sorted(by_id.values(), key=lambda e: e["id"])


@router.get("/adapters")
async def list_adapters(request: Request) -> dict[str, Any]:
    data = await asyncio.to_thread(adapters_listing, _registry(request))
    return {"object": "list", "data": data}


def _verified(request: Request, adapter_id: str, version: int) -> Any:
    gateway = request.app.state.gateway
    return _registry(request).verify(
        adapter_id, version, expected_base_model=base_model_id(gateway.cfg)
    )


@router.post("/adapters/{adapter_id}/verify")
async def verify_adapter(adapter_id: str, body: VersionBody, request: Request) -> dict[str, Any]:
    record = await asyncio.to_thread(_verified, request, adapter_id, body.version)
    return {"object": "adapter.verification", "verified": True, **record.summary()}


async def _point(request: Request, adapter_id: str, body: VersionBody, rollback: bool) -> Any:
    registry = _registry(request)

    def work() -> Any:
        _verified(request, adapter_id, body.version)  # never point at what does not verify
        current = registry.storage.read_pointer(adapter_id)
        if rollback:
            if current is not None and body.version >= current:
                raise InvalidRequest(
                    f"a rollback goes to an older version than the current v{current}, "
                    f"got v{body.version}; use promote",
                    param="version",
                )
            registry.rollback(adapter_id, body.version, reason=body.reason or "UI rollback")
        else:
            registry.set_current(adapter_id, body.version, reason=body.reason or "UI promotion")
        return current

    previous = await asyncio.to_thread(work)
    await request.app.state.gateway.models.adapters(fresh=True)  # explicit names follow now
    return {"object": "adapter.pointer", "id": adapter_id, "current_version": body.version,
            "previous_version": previous}  # fmt: skip


@router.post("/adapters/{adapter_id}/promote")
async def promote_adapter(adapter_id: str, body: VersionBody, request: Request) -> Any:
    return await _point(request, adapter_id, body, rollback=False)


@router.post("/adapters/{adapter_id}/rollback")
async def rollback_adapter(adapter_id: str, body: VersionBody, request: Request) -> Any:
    return await _point(request, adapter_id, body, rollback=True)


@router.post("/keys/{key_id}/revoke")
async def revoke_signing_key(key_id: str, request: Request) -> dict[str, Any]:
    """``qlp keys revoke`` over HTTP, then eviction on every compositor replica."""
    gateway = request.app.state.gateway
    cfg = gateway.cfg

    def work() -> None:
        revoke_key(cfg, key_id, audit_for(cfg))  # 400 current key, 404 unknown
        Registry(cfg).storage.bump_generation()  # other gateways and replicas re-check

    await asyncio.to_thread(work)
    evicted, acknowledged = await _revalidate_compositors(gateway)
    models = getattr(gateway, "models", None)
    if models is not None:  # the gateway's own table: refused at the next request
        await models.adapters(fresh=True)
        await await_remote(gateway.router.refresh.remote())  # routed requests too
    return {"object": "key.revocation", "key_id": key_id, "evicted": evicted,
            "acknowledged": acknowledged}  # fmt: skip


async def _revalidate_compositors(gateway: Any) -> tuple[list[str], int]:
    """Every compositor replica evicts what may no longer be served: one handle call with
    one replica, the swap board with several. ``(evicted ids, replicas that answered)``."""
    compositor = getattr(gateway, "compositor", None)
    if compositor is None:  # an app without Serve (tests)
        return [], 0
    s = gateway.cfg.serve
    if s.compositor_replicas == 1:
        return list(await await_remote(compositor.revalidate.remote())), 1
    board = await asyncio.to_thread(make_swap_board, gateway.cfg)
    acks = await broadcast(board, "revalidate", replicas=s.compositor_replicas,
                           timeout_s=s.swap_warm_timeout_s, poll_s=s.swap_poll_s)  # fmt: skip
    raise_first_error(acks)
    return list(dict.fromkeys(key for ack in acks for key in ack.result)), len(acks)


@router.get("/audit")
async def audit_events(
    request: Request,
    adapter: str | None = None,
    kind: list[str] | None = Query(None),
    last: int = Query(100, ge=1, le=10_000),
) -> dict[str, Any]:
    log = audit_for(request.app.state.gateway.cfg)
    if log is None:
        raise NotFound("the audit log is off (`store.audit: false`)")
    events = await asyncio.to_thread(log.events, adapter, tuple(kind) if kind else None)
    return {"object": "list", "data": [e.model_dump() for e in events[-last:]]}


__all__ = ["adapters_listing", "router"]
