"""The router's work on device actors, through the scheduler (``router.offload``).

:class:`DeviceOffload` submits ``embedding`` / ``vector_search`` workloads to the running
``qlp-scheduler`` (which picks the device by ``hardware.capabilities``) and falls back to
the caller's in-process function when the mode keeps the work local, when this process is
not connected to Ray, when no scheduler runs, or when no device can take the workload. A
fallback's reason is logged (a warning the first time, debug after) and returned with the
result as a :class:`~qlp_ray.hardware.offload.Placement`. Errors of the work itself (a bad
payload) are raised as they would be in process.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import ray
from ray.exceptions import ActorUnavailableError, GetTimeoutError, RayActorError, RayTaskError

from actors.device import SCHEDULER_NAME
from qlp_ray.core.config import HardwareConfig
from qlp_ray.core.errors import NoCapableDevice, WorkloadFailed
from qlp_ray.hardware.offload import EMBED_CHUNK, Placement, Scope, chunk_bounds, wants_devices

logger = logging.getLogger(__name__)

#: after a failed look-up, the next one waits this long (a per-request caller must not
#: ask the GCS for a missing actor on every request)
LOOKUP_RETRY_S = 5.0
#: a routed request does not wait longer than this for a device (then it searches here)
REQUEST_TIMEOUT_S = 5.0
# no device could do it (the scheduler's verdicts, or a device actor Ray could not reach)
_UNAVAILABLE = (NoCapableDevice, WorkloadFailed, RayActorError, ActorUnavailableError)


class _Fallback(Exception):
    """The work cannot go to a device; the message says why."""


def _cause(exc: BaseException) -> BaseException:
    return getattr(exc, "cause", None) or exc


class DeviceOffload:
    """Runs router work on the scheduler's device actors, or in process with a reason."""

    def __init__(
        self,
        mode: str,
        hardware: HardwareConfig | None = None,
        *,
        chunk: int = EMBED_CHUNK,
        timeout_s: float = 900.0,
    ) -> None:
        wants_devices(mode, "batch")  # validates the mode
        self.mode = mode
        self.hardware = hardware or HardwareConfig()
        self.chunk = chunk
        self.timeout_s = timeout_s
        self.counts = {"device": 0, "process": 0}
        self._handle: Any = None
        self._next_lookup = 0.0
        self._told: set[str] = set()
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ plumbing
    def _scheduler(self) -> Any:
        if not ray.is_initialized():
            raise _Fallback("this process is not connected to a Ray cluster")
        with self._lock:
            if self._handle is not None:
                return self._handle
            if time.monotonic() < self._next_lookup:
                raise _Fallback(f"no {SCHEDULER_NAME!r} actor (looked up less than "
                                f"{LOOKUP_RETRY_S:g} s ago)")  # fmt: skip
            try:
                self._handle = ray.get_actor(SCHEDULER_NAME, namespace=self.hardware.namespace)
            except ValueError:
                self._next_lookup = time.monotonic() + LOOKUP_RETRY_S
                raise _Fallback(
                    f"no {SCHEDULER_NAME!r} actor in Ray namespace {self.hardware.namespace!r} "
                    "(start it with actors.launch.start_hardware())"
                ) from None
            return self._handle

    def _submit(
        self, kind: str, payloads: list[dict[str, Any]], timeout_s: float
    ) -> list[dict[str, Any]]:
        scheduler = self._scheduler()
        refs = [scheduler.submit.remote(kind, p) for p in payloads]
        try:
            return ray.get(refs, timeout=timeout_s)
        except RayTaskError as exc:
            cause = _cause(exc)
            if isinstance(cause, _UNAVAILABLE):
                raise _Fallback(
                    f"the scheduler has no device for {kind!r}: {cause} (device actors "
                    "start with actors.launch.start_hardware())"
                ) from exc
            raise cause from exc  # the work's own error, as in process
        except (RayActorError, GetTimeoutError) as exc:
            with self._lock:
                self._handle = None  # look it up again next time
            raise _Fallback(f"the scheduler did not answer: {type(exc).__name__}") from exc

    def _local(self, kind: str, reason: str) -> Placement:
        placement = Placement(kind, "process", reason)
        level = logging.WARNING if reason not in self._told else logging.DEBUG
        self._told.add(reason)
        logger.log(level, "%s runs in this process: %s", kind, reason)
        return placement

    def run(
        self,
        kind: str,
        payloads: list[dict[str, Any]],
        local: Callable[[list[dict[str, Any]]], list[Any]],
        scope: Scope = "batch",
    ) -> tuple[list[Any], Placement]:
        """Results of ``payloads`` (one workload each), from devices or from ``local``, and
        where they were computed."""
        if not wants_devices(self.mode, scope):
            placement = Placement(kind, "process", f"router.offload is {self.mode!r}")
        else:
            try:
                timeout = REQUEST_TIMEOUT_S if scope == "request" else self.timeout_s
                outputs = self._submit(kind, payloads, timeout)
            except _Fallback as exc:
                placement = self._local(kind, str(exc))
            else:
                self.counts["device"] += 1
                return [o["result"] for o in outputs], Placement.on_devices(kind, outputs)
        self.counts["process"] += 1
        return local(payloads), placement

    # ----------------------------------------------------------------- the work
    def embed(
        self,
        texts: list[str],
        local: Callable[[list[str]], np.ndarray],
        model: str | None = None,
    ) -> tuple[np.ndarray, Placement]:
        """Unit embeddings of ``texts`` (batch scope): ``embedding`` workloads of
        :data:`EMBED_CHUNK` texts, or ``local(texts)``."""
        texts = list(texts)
        if not texts:
            return local(texts), Placement("embedding", "process", "no texts")
        extra = {"model": model} if model else {}
        payloads = [{"texts": texts[a:b], **extra} for a, b in chunk_bounds(len(texts), self.chunk)]
        parts, placement = self.run(
            "embedding", payloads, lambda ps: [local([t for p in ps for t in p["texts"]])]
        )
        return np.concatenate([np.asarray(p, dtype=np.float32) for p in parts]), placement

    def encoder(
        self, local: Callable[[list[str]], np.ndarray], model: str | None = None
    ) -> Callable[[list[str]], np.ndarray]:
        """``encode(texts)`` for code that takes an encoder (``qlp router train|eval``)."""

        def encode(texts: list[str]) -> np.ndarray:
            return self.embed(list(texts), local, model)[0]

        return encode

    def search(
        self,
        queries: np.ndarray,
        matrix: np.ndarray,
        k: int,
        local: Callable[[np.ndarray], np.ndarray],
        scope: Scope = "request",
    ) -> tuple[np.ndarray, np.ndarray, Placement]:
        """Top-``k`` inner-product ``(scores, indices)`` of ``queries`` against ``matrix``
        as one ``vector_search`` workload, or from ``local(queries)`` (full similarities)."""

        def in_process(ps: list[dict[str, Any]]) -> list[dict[str, np.ndarray]]:
            sims = np.asarray(local(ps[0]["queries"]), dtype=np.float32)
            idx = np.argsort(-sims, axis=1, kind="stable")[:, :k]
            return [{"scores": np.take_along_axis(sims, idx, axis=1), "indices": idx}]

        payload = {"queries": np.asarray(queries, np.float32), "matrix": matrix, "k": int(k)}
        outs, placement = self.run("vector_search", [payload], in_process, scope)
        return np.asarray(outs[0]["scores"]), np.asarray(outs[0]["indices"]), placement


__all__ = ["DeviceOffload"]
