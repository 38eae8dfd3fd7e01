"""Long operations (train, tune, eval, optimize) as Ray jobs.

Thin wrapper over ``ray.job_submission.JobSubmissionClient``: any ``qlp ...``
command runs as ``python -m qlp_ray ...`` on the cluster (the same as
``ray job submit -- qlp train ...``), with ``QLP_*`` settings forwarded. These
functions are meant to be exposed by ``qlp_ray.client.Client`` as
``submit_job`` / ``job_status`` / ``job_logs`` / ``cancel_job``.

Security: the Jobs API runs arbitrary code; keep the dashboard bound to
127.0.0.1 (the default here) or protected by Ray's token auth.
"""

from __future__ import annotations

import logging
import os
import shlex
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from qlp_ray.core.config import secret_variables
from qlp_ray.core.errors import InvalidRequest, NotFound
from qlp_ray.core.paths import source_checkout

logger = logging.getLogger(__name__)

DEFAULT_DASHBOARD = "http://127.0.0.1:8265"
QLP_COMMANDS = ("train", "tune", "eval", "optimize", "demo", "adapters")
TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")


def dashboard_address(address: str | None = None) -> str:
    """Explicit address, else ``RAY_DASHBOARD_ADDRESS`` / an http ``RAY_ADDRESS``, else local."""
    if address:
        return address
    for var in ("RAY_DASHBOARD_ADDRESS", "RAY_ADDRESS"):
        value = os.environ.get(var, "")
        if value.startswith(("http://", "https://")):
            return value
    return DEFAULT_DASHBOARD


def qlp_entrypoint(args: Sequence[str], *, python: str | None = None) -> str:
    """Shell entrypoint running ``qlp <args>`` with this interpreter (quoted safely)."""
    args = list(args)
    if not args or args[0] not in QLP_COMMANDS:
        raise InvalidRequest(
            f"job command must start with one of {QLP_COMMANDS}, got {args[:1]}", param="command"
        )
    return shlex.join([python or sys.executable, "-m", "qlp_ray", *args])


def _runtime_env(extra_env: dict[str, str] | None) -> dict[str, Any]:
    """The job's ``runtime_env``: this process's ``QLP_*`` settings except secrets.

    A runtime env is visible to anyone who can read the Jobs API (``ray job list``, the
    dashboard), so keys and passwords never travel in it: a job reads them from its
    cluster's own environment (``ray start``'s, a Kubernetes secret), as the Serve replicas
    do. ``extra_env`` is passed as given.
    """
    secret = secret_variables()
    env = {k: v for k, v in os.environ.items() if k.startswith("QLP_") and k not in secret}
    env.update({"HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"})
    # a source checkout (not installed) reaches the job's workers through PYTHONPATH
    root = source_checkout()
    pythonpath = [str(root) if root else "", os.environ.get("PYTHONPATH", "")]
    if any(pythonpath):
        env["PYTHONPATH"] = os.pathsep.join(p for p in pythonpath if p)
    env.update(extra_env or {})
    return {"env_vars": env}


@dataclass(frozen=True)
class JobInfo:
    job_id: str
    status: str
    entrypoint: str
    message: str | None


class JobsClient:
    """Submit, inspect and cancel Ray jobs (one ``JobSubmissionClient``)."""

    def __init__(self, address: str | None = None) -> None:
        from ray.job_submission import JobSubmissionClient

        self.address = dashboard_address(address)
        self._client = JobSubmissionClient(self.address)

    def submit_job(
        self,
        command: Sequence[str],
        *,
        job_id: str | None = None,
        env: dict[str, str] | None = None,
        metadata: dict[str, str] | None = None,
        agent_wait_s: float = 60.0,
    ) -> str:
        """Run ``qlp <command>`` as a Ray job; returns the job id."""
        entrypoint = qlp_entrypoint(command)
        deadline = time.monotonic() + agent_wait_s
        while True:
            try:
                job = self._client.submit_job(
                    entrypoint=entrypoint,
                    submission_id=job_id,
                    runtime_env=_runtime_env(env),
                    metadata=metadata,
                )
                break
            except RuntimeError as exc:
                # a freshly started node's job agent registers a few seconds after the dashboard
                if "No available agent" not in str(exc) or time.monotonic() > deadline:
                    raise
                logger.debug("job agent not ready yet; retrying")
                time.sleep(1.0)
        logger.info("submitted job %s: %s", job, entrypoint)
        return job

    def job_info(self, job_id: str) -> JobInfo:
        info = self._call(job_id, self._client.get_job_info)
        return JobInfo(job_id, str(info.status.value), info.entrypoint, info.message)

    def job_status(self, job_id: str) -> str:
        """PENDING, RUNNING, SUCCEEDED, FAILED or STOPPED."""
        return str(self._call(job_id, self._client.get_job_status).value)

    def job_logs(self, job_id: str) -> str:
        return str(self._call(job_id, self._client.get_job_logs))

    def cancel_job(self, job_id: str) -> bool:
        """Ask the job to stop; False if it had already finished."""
        return bool(self._call(job_id, self._client.stop_job))

    def list_jobs(self) -> list[JobInfo]:
        return [
            JobInfo(j.submission_id or j.job_id or "", str(j.status.value), j.entrypoint, j.message)
            for j in self._client.list_jobs()
        ]

    @staticmethod
    def _call(job_id: str, fn: Any) -> Any:
        try:
            return fn(job_id)
        except RuntimeError as exc:
            if "does not exist" in str(exc) or "404" in str(exc):
                raise NotFound(f"no job with id {job_id!r}", param="job_id") from exc
            raise


__all__ = ["JobInfo", "JobsClient", "dashboard_address", "qlp_entrypoint"]
