"""Admin HTTP routes of A/B experiments (all need the admin key when one is configured).

``POST /v1/admin/experiments``            an :class:`ExperimentSpec` → 201 and the definition;
                                          400 for a bad body (strategy, weights, window),
                                          404 naming a variant whose adapter/version does
                                          not exist, 409 for a taken id
``GET  /v1/admin/experiments``            every experiment with its status
``GET  /v1/admin/experiments/{id}``       the analysis: per-variant impressions, successes,
                                          success rate + Wilson CI, mean latency and rating,
                                          chi-square p-value, minimum sample size, winner,
                                          bandit traffic shares
``POST /v1/admin/experiments/{id}/stop``  stop assigning (idempotent); the analysis stays
"""

# No `from __future__ import annotations`: FastAPI must see the real types.
import asyncio
from typing import Any

from fastapi import APIRouter, Depends, Request

from qlp_ray.core.errors import QLPError
from qlp_ray.experiments.ab import ExperimentSpec
from qlp_ray.experiments.runtime import AUTO
from qlp_ray.serve.http.auth import require_admin

router = APIRouter(prefix="/v1/admin/experiments", dependencies=[Depends(require_admin)])


def _runtime(request: Request) -> Any:
    return request.app.state.gateway.experiments.runtime


async def _check_models(gateway: Any, spec: ExperimentSpec) -> None:
    """Every variant target and ``applies_to`` model must be registered (404 names it)."""
    checks = [(f"variants.{i}.target", v.target) for i, v in enumerate(spec.variants)]
    checks += [(f"applies_to.{i}", m) for i, m in enumerate(spec.applies_to)
               if m not in (AUTO, gateway.base_model)]  # fmt: skip
    for param, model in checks:
        try:
            await gateway.models.versioned_id(model)
        except QLPError as exc:
            raise type(exc)(f"`{param}` ({model!r}): {exc.message}", param=param) from None


@router.post("", status_code=201)
async def create_experiment(body: ExperimentSpec, request: Request) -> dict[str, Any]:
    await _check_models(request.app.state.gateway, body)
    return await asyncio.to_thread(_runtime(request).create, body)


@router.get("")
async def list_experiments(request: Request) -> dict[str, Any]:
    return {"object": "list", "data": await asyncio.to_thread(_runtime(request).list)}


@router.get("/{experiment_id}")
async def experiment_analysis(experiment_id: str, request: Request) -> dict[str, Any]:
    await request.app.state.gateway.recorder.flush()  # outcomes of answered requests first
    return await asyncio.to_thread(_runtime(request).analysis, experiment_id)


@router.post("/{experiment_id}/stop")
async def stop_experiment(experiment_id: str, request: Request) -> dict[str, Any]:
    return await asyncio.to_thread(_runtime(request).stop, experiment_id)


__all__ = ["router"]
