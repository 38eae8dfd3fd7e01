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
from qlp_ray.registry.store import Registry
from qlp_ray.serve.http.auth import require_admin

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
