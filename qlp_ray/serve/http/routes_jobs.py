"""Long operations over HTTP, run as Ray jobs (trainer key): fine-tuning, evaluation, optimisation.

``POST /v1/fine-tuning/jobs``          ``{"model": domain | adapter id, "training_file": path,
                                        "method": sft|dpo|grpo|rloo|reward|distill|...,
                                        "reward", "teacher", "parent", "init",
                                        "hyperparameters": {"n_steps" | "n_epochs", "method",
                                        "batch_size", "learning_rate", "lora_rank",
                                        "lora_alpha", "lora_dropout", ppo: "kl_coef",
                                        "kl_target", "clip_range", "ppo_epochs"}}`` → a job running
                                        ``qlp train ... --run-name <job id>``
``GET /v1/fine-tuning/jobs``            the fine-tuning jobs of the cluster
``GET /v1/fine-tuning/jobs/{id}``       one job (status, logs tail on failure)
``DELETE /v1/fine-tuning/jobs/{id}``    cancel it
``POST /v1/evaluations``                ``{"domain", "adapter", "version", "limit"}`` → a job
                                        running ``qlp eval run ... --record``
``GET /v1/evaluations/leaderboard``     best evaluation per adapter (read directly)
``POST /v1/optimizations``              ``{"method", "sparsity", "domain"}`` → a job running
                                        ``qlp optimize run ...``

The gateway reaches the Ray Jobs API at ``jobs.dashboard_address``. ``training_file`` is a
path on the cluster's file system; the Jobs API runs code, hence trainer/admin-only routes.
"""

# No `from __future__ import annotations`: FastAPI must see the real types.
import asyncio
import logging
import re
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Literal

from fastapi import APIRouter, Depends, Query, Request
from pydantic import BaseModel, ConfigDict, Field

from qlp_ray.core.config import DOMAINS, QLPConfig
from qlp_ray.core.errors import AdapterNotFound, InvalidRequest, NotFound, Overloaded
from qlp_ray.core.jobs import JobsClient, dashboard_address
from qlp_ray.data.capsules import SAMPLES_DIR, load_capsules
from qlp_ray.evaluate.leaderboard import Leaderboard, default_leaderboard_path
from qlp_ray.registry.store import Registry
from qlp_ray.serve.http.auth import require_trainer
from qlp_ray.train import PeftMethod
from qlp_ray.train.estimate import steps_for_epochs
from qlp_ray.train.methods import METHODS

logger = logging.getLogger(__name__)
router = APIRouter(prefix="/v1", dependencies=[Depends(require_trainer)])

# Ray job status → OpenAI fine_tuning.job status
_STATUS = {
    "PENDING": "queued",
    "RUNNING": "running",
    "SUCCEEDED": "succeeded",
    "FAILED": "failed",
    "STOPPED": "cancelled",
}
_TRAIN_MARK = " -m qlp_ray train "
_OPTIMIZE_METHODS = ("dynamic-int8", "static-int8", "magnitude", "structured")


class Hyperparameters(BaseModel):
    model_config = ConfigDict(extra="forbid")

    n_steps: int | None = Field(None, ge=1, description="Optimizer steps (default: config).")
    n_epochs: float | None = Field(
        None, gt=0, le=1000, description="Passes over the training records (instead of n_steps)."
    )
    method: PeftMethod | None = Field(None, description="PEFT method (as `train.method`).")
    batch_size: int | None = Field(None, ge=1, le=1024, description="Per-worker batch size.")
    learning_rate: float | None = Field(None, gt=0, le=1, description="Peak learning rate.")
    lora_rank: int | None = Field(None, ge=1, le=1024, description="LoRA rank r.")
    lora_alpha: int | None = Field(None, ge=1, le=4096, description="LoRA alpha.")
    lora_dropout: float | None = Field(None, ge=0, lt=1, description="LoRA dropout.")
    kl_coef: float | None = Field(None, ge=0, le=100, description="ppo: KL penalty weight.")
    kl_target: float | None = Field(
        None, gt=0, le=1000, description="ppo: adaptive KL control towards this KL."
    )
    clip_range: float | None = Field(None, gt=0, lt=1, description="ppo: ratio clip epsilon.")
    ppo_epochs: int | None = Field(None, ge=1, le=64, description="ppo: passes per rollout.")

    def train_options(self, skip: tuple[str, ...] = ()) -> list[str]:
        """The ``qlp train`` options of the LoRA and optimiser fields that are set."""
        out: list[str] = []
        options = [
            ("--method", self.method),
            ("--batch-size", self.batch_size),
            ("--lr", self.learning_rate),
            ("--rank", self.lora_rank),
            ("--alpha", self.lora_alpha),
            ("--dropout", self.lora_dropout),
            *((f"--{name.replace('_', '-')}", getattr(self, name)) for name in PPO_FIELDS),
        ]
        for option, value in options:
            if value is not None and option not in skip:
                out += [option, str(value)]
        return out


PPO_FIELDS = METHODS["ppo"].hyperparameters  # the method table's list (train.ppo fields)


class FineTuningRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str = Field(min_length=1, description="A domain, or an adapter id to train anew.")
    training_file: str = Field(
        min_length=1, description="JSONL on the cluster, in the method's data shape."
    )
    validation_file: str | None = Field(None, description="Held-out rows (same shape).")
    hyperparameters: Hyperparameters = Field(default_factory=Hyperparameters)
    method: str | None = Field(
        None, description="Training method (qlp_ray.train.methods.METHODS; default: SFT)."
    )
    reward: str | None = Field(None, description="grpo/rloo/ppo: the reward spec (--reward).")
    teacher: str | None = Field(None, description="distill: teacher adapter id or 'base'.")
    parent: str | None = Field(None, description="Registered adapter id[@version] to continue.")
    init: str | None = Field(
        None, description="sft/adalora: 'base' (default), 'meta' or a meta-init id[@version]."
    )


class EvaluationRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    domain: str = Field(min_length=1, description="Skill domain of the eval set.")
    adapter: str | None = Field(None, min_length=1, description="Adapter id (default: base).")
    version: int | None = Field(None, ge=1, description="Adapter version (default: current).")
    limit: int | None = Field(None, ge=1, description="Evaluate only the first N samples.")


class OptimizationRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    method: Literal["dynamic-int8", "static-int8", "magnitude", "structured"] | None = None
    sparsity: float | None = Field(None, ge=0.1, le=0.9, description="Pruning target.")
    domain: str = Field("api", description="Domain whose samples measure quality.")


def _cfg(request: Request) -> QLPConfig:
    return request.app.state.gateway.cfg


def _jobs_client(cfg: QLPConfig) -> Any:
    """A ``JobsClient`` on ``jobs.dashboard_address``; 503 when the Jobs API is unreachable."""

    address = dashboard_address(cfg.jobs.dashboard_address or None)
    try:
        return JobsClient(address)
    except (ConnectionError, RuntimeError) as exc:
        raise Overloaded(f"the Ray Jobs API at {address} is unreachable: {exc}") from exc


def new_job_id(prefix: str) -> str:
    return f"{prefix}-{time.time_ns():x}"


async def _submit(cfg: QLPConfig, command: list[str], prefix: str, job_id: str = "") -> str:
    client = await asyncio.to_thread(_jobs_client, cfg)
    job_id = job_id or new_job_id(prefix)
    # the job writes to the registry/leaderboard this gateway serves from
    env = {"QLP_HOME": str(cfg.paths.root)}
    return await asyncio.to_thread(client.submit_job, command, job_id=job_id, env=env)


def _check_domain(domain: str) -> None:
    if domain not in DOMAINS:
        raise InvalidRequest(f"`domain` must be one of {DOMAINS}, got {domain!r}", param="domain")


FILE_ID = re.compile(r"file-[0-9a-f]{16,64}")


def data_dirs(cfg: QLPConfig) -> list[Path]:
    """Where a REST job's data files may live (``jobs.data_dirs``, resolved)."""
    dirs = cfg.jobs.data_dirs or [cfg.paths.root / "data", SAMPLES_DIR]
    return [Path(d).expanduser().resolve() for d in dirs]


def check_data_file(cfg: QLPConfig, path: str, param: str) -> str:
    """``path`` resolved, if it is a .jsonl file inside one of :func:`data_dirs`. One message
    for "missing" and "elsewhere": the answer never tells whether a path exists."""
    dirs = data_dirs(cfg)
    if FILE_ID.fullmatch(path):  # an upload of POST /v1/files, named by its content hash
        path = str(dirs[0] / "uploads" / f"{path}.jsonl")
    p = Path(path)
    if p.suffix != ".jsonl":
        raise InvalidRequest(f"`{param}` must be a .jsonl file or a file id", param=param)
    real = p.expanduser().resolve()  # follows .. and symlinks
    if not (any(real.is_relative_to(d) for d in dirs) and real.is_file()):
        raise InvalidRequest(  # names no server path: the client's own value, not the dirs
            f"`{param}` is not a .jsonl file in the job data directories (`jobs.data_dirs`) "
            "nor the id of a POST /v1/files upload",
            param=param,
        )
    return str(real)


def _domain_of(cfg: QLPConfig, model: str) -> tuple[str, str | None]:
    """(domain, adapter id) of ``model``: a domain, or a registered adapter (retrained)."""
    if model in DOMAINS:
        return model, None

    try:
        record = Registry(cfg).get(model)
    except AdapterNotFound as exc:
        raise InvalidRequest(
            f"`model` must be a domain {DOMAINS} or a registered adapter id, got {model!r}",
            param="model",
        ) from exc
    domain = str(record.domain or "")
    if domain not in DOMAINS:
        raise InvalidRequest(f"adapter {model!r} records no known domain", param="model")
    return domain, model


def training_records(cfg: QLPConfig, data: str, has_validation: bool) -> int:
    """Records the trainer trains on: the file's, less the held-out split ``qlp train``
    takes off (``train.eval_fraction``) when no validation file is given."""
    n = len(load_capsules(data))
    if has_validation or n < 2:
        return n
    return n - min(n - 1, max(1, round(n * cfg.train.eval_fraction)))


def planned_steps(cfg: QLPConfig, hp: Hyperparameters, data: str, has_validation: bool) -> int:
    """The run's optimizer steps: ``n_steps``, from ``n_epochs``, else ``train.steps``;
    400 above ``jobs.max_steps``."""
    if hp.n_steps is not None and hp.n_epochs is not None:
        raise InvalidRequest("give `n_steps` or `n_epochs`, not both", param="hyperparameters")
    steps, param = hp.n_steps or cfg.train.steps, "hyperparameters.n_steps"
    if hp.n_epochs is not None:
        n = training_records(cfg, data, has_validation)
        batch = hp.batch_size or cfg.train.batch_size
        steps = steps_for_epochs(hp.n_epochs, n, batch, cfg.train.workers)
        param = "hyperparameters.n_epochs"
    if steps > cfg.jobs.max_steps:
        raise InvalidRequest(
            f"`{param}` makes {steps} steps; at most {cfg.jobs.max_steps}", param=param
        )
    return steps


def method_of(body: FineTuningRequest) -> Any:
    """The request's training method (``method``, else SFT with ``hyperparameters.method``),
    its options checked against it: 400 names the field."""
    from qlp_ray.train.methods import check_options, get_method, require_available

    hp_method = body.hyperparameters.method
    spec = get_method(body.method or hp_method or "sft", "method")
    require_available(spec)
    if body.method is not None and hp_method is not None:
        if spec.peft is None or get_method(hp_method).name != spec.name:
            raise InvalidRequest(
                f"`hyperparameters.method` ({hp_method!r}) contradicts `method` "
                f"({body.method!r}); give `method` only",
                param="hyperparameters.method",
            )
    check_options(spec, reward=body.reward, teacher=body.teacher, parent=body.parent,
                  init=body.init)  # fmt: skip
    for name in PPO_FIELDS:
        if getattr(body.hyperparameters, name) is not None and spec.name != "ppo":
            raise InvalidRequest(
                f"`hyperparameters.{name}` applies to method 'ppo', not {spec.name!r}",
                param=f"hyperparameters.{name}",
            )
    return spec


def check_shape(spec: Any, path: str, param: str) -> None:
    """400 naming ``param`` when a row lacks a field of the method's data shape."""
    from qlp_ray.train.methods import validate_data_file

    try:
        validate_data_file(spec, path, param)
    except InvalidRequest as exc:
        raise InvalidRequest(str(exc), param=param) from exc


def train_command(
    cfg: QLPConfig, body: FineTuningRequest, run_name: str | None = None
) -> list[str]:
    """The ``qlp train`` arguments of a validated fine-tuning request."""
    hp = body.hyperparameters
    if hp.n_steps is not None and hp.n_steps > cfg.jobs.max_steps:
        raise InvalidRequest(
            f"`hyperparameters.n_steps` is {hp.n_steps}; at most {cfg.jobs.max_steps}",
            param="hyperparameters.n_steps",
        )
    spec = method_of(body)
    data = check_data_file(cfg, body.training_file, "training_file")
    check_shape(spec, data, "training_file")
    domain, adapter_id = _domain_of(cfg, body.model)
    command = ["train", "--domain", domain, "--data", data]
    if body.validation_file is not None:
        heldout = check_data_file(cfg, body.validation_file, "validation_file")
        check_shape(spec, heldout, "validation_file")
        command += ["--heldout", heldout]
    if hp.n_epochs is not None and spec.peft is None:
        raise InvalidRequest(
            f"`hyperparameters.n_epochs` applies to SFT methods; give `n_steps` for {spec.name}",
            param="hyperparameters.n_epochs",
        )
    if hp.n_steps is not None or hp.n_epochs is not None:
        has_validation = body.validation_file is not None
        command += ["--steps", str(planned_steps(cfg, hp, data, has_validation))]
    if body.method is not None:
        command += ["--method", spec.name]
        command += hp.train_options(skip=("--method",))
    else:
        command += hp.train_options()
    for option, value in (("--reward", body.reward), ("--teacher", body.teacher),
                          ("--parent", body.parent), ("--init", body.init)):  # fmt: skip
        if value is not None:
            command += [option, value]
    if adapter_id is not None:
        command += ["--adapter-id", adapter_id]
    if run_name is not None:
        command += ["--run-name", run_name]
    return command


def job_object(info: Any) -> dict[str, Any]:
    return {
        "id": info.job_id,
        "object": "fine_tuning.job",
        "status": _STATUS.get(info.status, info.status.lower()),
        "ray_status": info.status,
        "entrypoint": info.entrypoint,
        "message": info.message,
    }


# -- fine-tuning ----------------------------------------------------------------------
@router.post("/fine-tuning/jobs")
async def create_fine_tuning_job(body: FineTuningRequest, request: Request) -> dict[str, Any]:
    """Submit ``qlp train ...`` as a Ray job (validated first: 400 names the bad field)."""
    cfg = _cfg(request)
    job_id = new_job_id("ftjob")  # also the run's directory: its metrics are found by it
    command = await asyncio.to_thread(train_command, cfg, body, job_id)
    job_id = await _submit(cfg, command, "ftjob", job_id)
    return {
        "id": job_id,
        "object": "fine_tuning.job",
        "status": "queued",
        "model": body.model,
        "training_file": body.training_file,
        "hyperparameters": body.hyperparameters.model_dump(),
    }


@router.get("/fine-tuning/jobs")
async def list_fine_tuning_jobs(request: Request) -> dict[str, Any]:
    client = await asyncio.to_thread(_jobs_client, _cfg(request))
    jobs = await asyncio.to_thread(client.list_jobs)
    data = [job_object(j) for j in jobs if _TRAIN_MARK in f"{j.entrypoint} "]
    return {"object": "list", "data": data}


async def fine_tuning_info(request: Request, job_id: str) -> tuple[Any, Any]:
    client = await asyncio.to_thread(_jobs_client, _cfg(request))
    info = await asyncio.to_thread(client.job_info, job_id)
    if _TRAIN_MARK not in f"{info.entrypoint} ":
        raise NotFound(f"job {job_id!r} is not a fine-tuning job", param="job_id")
    return client, info


async def _placement_of(cfg: QLPConfig, job_id: str) -> dict[str, Any] | None:
    """The scheduler's placement of a running job's training run: waiting (and why) or
    placed (workers); None when it has none (not started yet, or finished)."""
    from actors.launch import placements  # lazy: loads ray

    try:
        live = await asyncio.to_thread(placements, cfg.hardware)
    except Exception as exc:  # noqa: BLE001 - the job status must not fail for this
        logger.warning("no placement for job %s: %s", job_id, exc)
        return None
    for run_id, record in live.items():
        if run_id.endswith(f":{job_id}"):
            keys = ("state", "reason", "workers", "requested_workers", "cpus_per_worker")
            return {k: record.get(k) for k in keys}
    return None


@router.get("/fine-tuning/jobs/{job_id}")
async def get_fine_tuning_job(job_id: str, request: Request) -> dict[str, Any]:
    client, info = await fine_tuning_info(request, job_id)
    out = job_object(info)
    if info.status == "RUNNING":
        out["placement"] = await _placement_of(_cfg(request), job_id)
    if info.status == "FAILED":
        out["logs_tail"] = (await asyncio.to_thread(client.job_logs, job_id))[-2000:]
    return out


@router.delete("/fine-tuning/jobs/{job_id}")
async def cancel_fine_tuning_job(job_id: str, request: Request) -> dict[str, Any]:
    client, _ = await fine_tuning_info(request, job_id)
    stopped = await asyncio.to_thread(client.cancel_job, job_id)
    out = job_object(await asyncio.to_thread(client.job_info, job_id))
    return {**out, "cancel_requested": stopped}


# -- evaluation and optimisation --------------------------------------------------------
@router.post("/evaluations")
async def create_evaluation(body: EvaluationRequest, request: Request) -> dict[str, Any]:
    """Submit ``qlp eval run ... --record --json`` as a Ray job."""
    _check_domain(body.domain)
    if body.version is not None and body.adapter is None:
        raise InvalidRequest("`version` needs `adapter`", param="version")
    command = ["eval", "run", "--domain", body.domain, "--record", "--json"]
    if body.adapter is not None:
        command += ["--adapter", body.adapter]
    if body.version is not None:
        command += ["--version", str(body.version)]
    if body.limit is not None:
        command += ["--limit", str(body.limit)]
    job_id = await _submit(_cfg(request), command, "eval")
    return {"id": job_id, "object": "evaluation", "status": "queued", **body.model_dump()}


@router.get("/evaluations/leaderboard")
async def evaluation_leaderboard(
    request: Request,
    domain: str | None = None,
    metric: str = "score",
    limit: int = Query(10, ge=1, le=1000),
) -> dict[str, Any]:
    """The best evaluation of each adapter, ranked by ``metric``."""

    if domain is not None:
        _check_domain(domain)
    board = Leaderboard(default_leaderboard_path(_cfg(request)))
    entries = await asyncio.to_thread(board.top, domain=domain, metric=metric, limit=limit)
    return {"object": "list", "metric": metric, "data": [asdict(e) for e in entries]}


@router.post("/optimizations")
async def create_optimization(body: OptimizationRequest, request: Request) -> dict[str, Any]:
    """Submit ``qlp optimize run ... --json`` as a Ray job."""
    _check_domain(body.domain)
    if body.sparsity is not None and body.method not in ("magnitude", "structured"):
        raise InvalidRequest("`sparsity` applies to 'magnitude' or 'structured'", param="sparsity")
    command = ["optimize", "run", "--domain", body.domain, "--json"]
    if body.method is not None:
        command += ["--method", body.method]
    if body.sparsity is not None:
        command += ["--sparsity", str(body.sparsity)]
    job_id = await _submit(_cfg(request), command, "optimize")
    return {"id": job_id, "object": "optimization", "status": "queued", **body.model_dump()}


__all__ = [
    "Hyperparameters",
    "check_data_file",
    "fine_tuning_info",
    "job_object",
    "planned_steps",
    "router",
    "training_records",
    "train_command",
]
