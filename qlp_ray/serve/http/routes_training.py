"""What a fine-tuning job reports and will cost (trainer or admin key), beside ``routes_jobs``.

``GET /v1/fine-tuning/jobs/{id}/metrics``  the job's reported metrics so far: every trainer
                                           log line, the training and held-out loss series,
                                           progress (step of total), and once it succeeded
                                           the signed adapter version it registered
``GET /v1/fine-tuning/jobs/{id}/loss_curve.png``  the loss curve the run wrote when it ended
``GET /v1/fine-tuning/methods``            every training method (the one table,
                                           :mod:`qlp_ray.train.methods`): data shape and
                                           fields, needed options (reward, teacher, parent),
                                           metric, the extra hyperparameters it takes
                                           (ppo: kl_coef, kl_target, clip_range, ppo_epochs:
                                           type, default, bounds); qlora ``available`` only
                                           with a CUDA GPU
``POST /v1/fine-tuning/estimate``          ``{"training_file", "validation_file",
                                           "hyperparameters"}`` → steps, tokens, time at the
                                           measured tokens/s, cost at the configured price

A REST job trains in the run directory ``<home>/runs/<job id>`` (``qlp train --run-name``),
where rank 0 appends its log lines to ``metrics.jsonl`` (:mod:`qlp_ray.train.run_metrics`).
"""

# No `from __future__ import annotations`: FastAPI must see the real types.
import asyncio
import functools
import logging
import shlex
from typing import Any, get_args

from fastapi import APIRouter, Depends, Request
from fastapi.responses import FileResponse
from pydantic import BaseModel, ConfigDict, Field

from qlp_ray.core.config import QLPConfig
from qlp_ray.core.errors import InvalidRequest, NotFound
from qlp_ray.data.capsules import load_capsules
from qlp_ray.data.format import to_prompt_completion
from qlp_ray.models.base import base_model_id
from qlp_ray.registry.store import Registry
from qlp_ray.serve.http.auth import require_trainer
from qlp_ray.serve.http.routes_jobs import (
    Hyperparameters,
    check_data_file,
    fine_tuning_info,
    job_object,
    planned_steps,
    training_records,
)
from qlp_ray.serve.telemetry.cost import PriceTable
from qlp_ray.train.estimate import measured_throughput, training_estimate
from qlp_ray.train.run_metrics import (
    CURVE_PNG,
    METRICS_FILE,
    loss_series,
    progress_of,
    read_metrics,
)

logger = logging.getLogger(__name__)
router = APIRouter(prefix="/v1/fine-tuning", dependencies=[Depends(require_trainer)])


class EstimateRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    training_file: str = Field(min_length=1, description="Capsules (JSONL) on the cluster.")
    validation_file: str | None = Field(None, description="Held-out capsules (JSONL).")
    hyperparameters: Hyperparameters = Field(default_factory=Hyperparameters)


def _cfg(request: Request) -> QLPConfig:
    return request.app.state.gateway.cfg


def _total_steps(cfg: QLPConfig, entrypoint: str) -> int:
    """``--steps`` of the job's ``qlp train`` command, else ``train.steps``."""
    args = shlex.split(entrypoint)
    if "--steps" in args[:-1]:
        return int(args[args.index("--steps") + 1])
    return cfg.train.steps


def _registered_by(cfg: QLPConfig, run_name: str) -> dict[str, Any] | None:
    """The registry version whose lineage names ``run_name`` (a link for the UI)."""
    for rec in Registry(cfg, audit=None).list(all_versions=True):
        if (rec.metadata.get("run") or {}).get("run_name") == run_name:
            return {"id": rec.adapter_id, "version": rec.version, "domain": rec.domain,
                    "signed": rec.signed, "problem": rec.problem,
                    "model": f"{rec.adapter_id}@{rec.version}"}  # fmt: skip
    return None


def cluster_has_gpu() -> bool:
    """Whether the cluster (the Ray one this process is in, else this host) has a GPU."""
    import ray  # lazy: a replica has it loaded

    if ray.is_initialized():
        return ray.cluster_resources().get("GPU", 0) > 0
    import torch

    return bool(torch.cuda.is_available())


_LIMITS = (("ge", 1, False), ("gt", 1, True), ("le", -1, False), ("lt", -1, True))


def _bounds(*fields: Any) -> dict[str, float]:
    """The tightest of the fields' ``ge``/``gt``/``le``/``lt`` constraints, as JSON Schema
    keywords (``minimum``, ``exclusiveMinimum``, ``maximum``, ``exclusiveMaximum``)."""
    tightest: dict[int, tuple[float, bool]] = {}  # side (1 lower, -1 upper) -> (value, strict)
    for f in fields:
        for m in f.metadata:
            for attr, side, strict in _LIMITS:
                value = getattr(m, attr, None)
                held = tightest.get(side)
                if value is not None and (
                    held is None or (side * value, strict) > (side * held[0], held[1])
                ):
                    tightest[side] = (value, strict)
    out: dict[str, float] = {}
    for side, (value, strict) in tightest.items():
        word = "Minimum" if side == 1 else "Maximum"
        out[f"exclusive{word}" if strict else word.lower()] = value
    return out


def method_hyperparameters(cfg: QLPConfig, spec: Any) -> list[dict[str, Any]]:
    """The extra hyperparameters a job of ``spec`` may set (``spec.hyperparameters``, fields
    of ``train.<method>``): type, the deployment's default, description, and the bounds
    both the config section and the request (``Hyperparameters``) enforce."""
    if not spec.hyperparameters:
        return []
    section = getattr(cfg.train, spec.name)
    out = []
    for name in spec.hyperparameters:
        field = type(section).model_fields[name]
        request_field = Hyperparameters.model_fields[name]
        kind = "integer" if int in (field.annotation, *get_args(field.annotation)) else "number"
        out.append({"name": name, "type": kind, "default": getattr(section, name),
                    "nullable": field.default is None, "description": field.description,
                    **_bounds(field, request_field)})  # fmt: skip
    return out


@router.get("/methods")
async def fine_tuning_methods(request: Request) -> dict[str, Any]:
    """The training methods a job may name (see the module docstring)."""
    from qlp_ray.train.method_data import methods_listing
    from qlp_ray.train.methods import METHODS

    listing = methods_listing(await asyncio.to_thread(cluster_has_gpu))
    for entry in listing["data"]:
        entry["hyperparameters"] = method_hyperparameters(_cfg(request), METHODS[entry["name"]])
    return listing


@router.get("/jobs/{job_id}/metrics")
async def fine_tuning_metrics(job_id: str, request: Request) -> dict[str, Any]:
    """The job's reported metrics so far (see the module docstring)."""
    cfg = _cfg(request)
    _, info = await fine_tuning_info(request, job_id)
    run_dir = cfg.paths.runs / job_id
    records = await asyncio.to_thread(read_metrics, run_dir / METRICS_FILE)
    job = job_object(info)
    out: dict[str, Any] = {
        "object": "fine_tuning.job.metrics",
        "job": job,
        "run_dir": str(run_dir),
        "records": records,
        "series": loss_series(records),
        "progress": progress_of(records, _total_steps(cfg, info.entrypoint)),
        "loss_curve": (run_dir / CURVE_PNG).is_file(),
        "adapter": None,
    }
    if job["status"] == "succeeded":
        out["adapter"] = await asyncio.to_thread(_registered_by, cfg, job_id)
    return out


@router.get("/jobs/{job_id}/loss_curve.png")
async def fine_tuning_loss_curve(job_id: str, request: Request) -> FileResponse:
    await fine_tuning_info(request, job_id)  # 404 for an unknown or non-training job
    path = _cfg(request).paths.runs / job_id / CURVE_PNG
    if not path.is_file():
        raise NotFound(f"job {job_id!r} has no loss curve (yet)", param="job_id")
    return FileResponse(path, media_type="image/png")


@functools.lru_cache(maxsize=4)
def _tokenizer(base_path: str) -> Any:
    from transformers import AutoTokenizer  # lazy: heavy

    return AutoTokenizer.from_pretrained(base_path)


def _token_counts(cfg: QLPConfig, data: str) -> list[int]:
    from qlp_ray.models.base import resolve_base_path

    tok = _tokenizer(resolve_base_path(cfg))
    counts = []
    for cap in load_capsules(data):
        row = to_prompt_completion(cap)
        ids = tok(row["prompt"] + row["completion"], add_special_tokens=True)["input_ids"]
        counts.append(min(len(ids), cfg.model.max_seq_len))
    return counts


def estimate(cfg: QLPConfig, body: EstimateRequest) -> dict[str, Any]:
    """Steps, tokens, time and cost of the run ``body`` would submit."""
    data = check_data_file(cfg, body.training_file, "training_file")
    if body.validation_file is not None:
        check_data_file(cfg, body.validation_file, "validation_file")
    hp = body.hyperparameters
    has_validation = body.validation_file is not None
    steps = planned_steps(cfg, hp, data, has_validation)
    n_train = training_records(cfg, data, has_validation)
    base = base_model_id(cfg)
    measured = measured_throughput(Registry(cfg, audit=None).list(all_versions=True), base)
    prices = PriceTable.load()
    entry, price = prices.price_for(prices.local_model)
    try:
        counts = _token_counts(cfg, data)
    except (OSError, ValueError) as exc:
        raise InvalidRequest(f"cannot tokenize {data}: {exc}", param="training_file") from exc
    out = training_estimate(
        counts,
        steps=steps,
        batch_size=hp.batch_size or cfg.train.batch_size,
        workers=cfg.train.workers,
        tokens_per_s=measured["tokens_per_s"] if measured else None,
        price_per_mtok=price.input_per_mtok,
        currency=prices.currency,
        train_records=n_train,
    )
    return {"object": "fine_tuning.estimate", **out, "price_entry": entry,
            "base_model": base, "throughput_from": measured,
            "records": n_train}  # fmt: skip


@router.post("/estimate")
async def fine_tuning_estimate(body: EstimateRequest, request: Request) -> dict[str, Any]:
    """What the run would cost (see the module docstring); 400 names a bad field."""
    return await asyncio.to_thread(estimate, _cfg(request), body)


__all__ = ["EstimateRequest", "estimate", "router"]
