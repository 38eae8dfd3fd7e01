"""Overload protection: admission limit at the gateway, back-pressure from the deployments.

Three layers, each answering with a ``Retry-After`` header instead of queueing forever:

1. **Gateway admission** (this module's :class:`AdmissionMiddleware`): each gateway replica
   runs at most ``serve.gateway_admission_limit`` completion/chat requests at once; the next
   one gets a 429 ``rate_limit_exceeded`` (OpenAI error shape) without waiting.
2. **Deployment back-pressure**: the router and compositor have Serve's
   ``max_ongoing_requests``/``max_queued_requests``; when a caller's queue is full Serve raises
   :class:`ray.serve.exceptions.BackPressureError` in the gateway, which
   :func:`qlp_ray.serve.http.errors.unwrap` turns into a 503 ``overloaded`` (OpenAI error shape).
3. **Proxy**: when the gateway's own Serve queue (``gateway_max_queued_requests``) is full,
   Serve's HTTP proxy answers 503 itself, before any of our code runs. Its body is Serve's
   plain text (not the OpenAI shape); the ``Retry-After`` header comes from the deployment's
   ``BackpressureConfig``, set by :func:`deployment_limits`.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from ray.serve.config import BackpressureConfig

from qlp_ray.core.config import ServeConfig
from qlp_ray.core.errors import RateLimited
from qlp_ray.serve.http.errors import qlp_error_response
from qlp_ray.serve.telemetry import metrics

logger = logging.getLogger(__name__)

# Routes that run a generation; everything else (health, models, admin) is never limited.
GENERATION_PATHS = frozenset({"/v1/completions", "/v1/chat/completions"})
DEPLOYMENTS = ("gateway", "router", "compositor")


class AdmissionLimiter:
    """A non-blocking counter of in-flight requests with a fixed ceiling (0 = unlimited)."""

    def __init__(self, limit: int, retry_after_s: float) -> None:
        if limit < 0:
            raise ValueError(f"admission limit must be >= 0 (got {limit})")
        self.limit = limit
        self.retry_after_s = retry_after_s
        self.admitted = 0
        self.rejected = 0
        self._in_flight = 0
        self._lock = threading.Lock()

    @classmethod
    def from_config(cls, serve_cfg: ServeConfig) -> AdmissionLimiter:
        return cls(serve_cfg.gateway_admission_limit, serve_cfg.retry_after_s)

    @property
    def in_flight(self) -> int:
        return self._in_flight

    def try_acquire(self) -> bool:
        """Take a slot if one is free; never waits."""
        with self._lock:
            if self.limit and self._in_flight >= self.limit:
                self.rejected += 1
                return False
            self._in_flight += 1
            self.admitted += 1
            return True

    def release(self) -> None:
        with self._lock:
            if self._in_flight <= 0:
                raise RuntimeError("AdmissionLimiter.release() without a matching acquire")
            self._in_flight -= 1

    def stats(self) -> dict[str, int]:
        with self._lock:
            return {
                "limit": self.limit,
                "in_flight": self._in_flight,
                "admitted": self.admitted,
                "rejected": self.rejected,
            }


def _route_path(scope: dict[str, Any]) -> str:
    path = scope.get("path", "")
    root = scope.get("root_path", "").rstrip("/")
    return path[len(root) :] if root and path.startswith(root) else path


class AdmissionMiddleware:
    """ASGI middleware: a generation request either gets a slot of the app's limiter
    (``app.state.admission``, held until the response is sent) or an immediate 429."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        limiter: AdmissionLimiter | None = None
        if scope["type"] == "http" and scope.get("method") == "POST":
            if _route_path(scope) in GENERATION_PATHS:
                limiter = getattr(scope["app"].state, "admission", None)
        if limiter is None:
            await self.app(scope, receive, send)
            return
        if not limiter.try_acquire():
            metrics.record_rejection("rate_limit_exceeded")
            logger.debug("admission limit %d reached; answered 429", limiter.limit)
            err = RateLimited(
                f"too many requests in flight on this server (limit {limiter.limit}); "
                f"retry after {limiter.retry_after_s:g} s",
                retry_after_s=limiter.retry_after_s,
            )
            await qlp_error_response(err)(scope, receive, send)
            return
        try:
            await self.app(scope, receive, send)
        finally:
            limiter.release()


def deployment_limits(serve_cfg: ServeConfig, deployment: str) -> dict[str, Any]:
    """``serve.deployment`` options bounding one deployment's concurrency and queue, and
    how its stopping replicas poll for requests still in flight."""
    if deployment not in DEPLOYMENTS:
        raise ValueError(f"unknown deployment {deployment!r}; expected one of {DEPLOYMENTS}")
    return {
        "max_ongoing_requests": getattr(serve_cfg, f"{deployment}_max_ongoing_requests"),
        "max_queued_requests": getattr(serve_cfg, f"{deployment}_max_queued_requests"),
        "backpressure_config": BackpressureConfig(
            status_code=503, retry_after_s=serve_cfg.retry_after_s
        ),
        "graceful_shutdown_wait_loop_s": serve_cfg.shutdown_poll_s,
    }


def replica_options(
    num_cpus: float, num_gpus: float = 0.0, resources: dict[str, float] | None = None
) -> dict[str, Any]:
    """``ray_actor_options`` of a replica: its CPUs, and GPUs / custom resources if any."""
    options: dict[str, Any] = {"num_cpus": num_cpus}
    if num_gpus:
        options["num_gpus"] = num_gpus
    if resources:
        options["resources"] = dict(resources)
    return options
