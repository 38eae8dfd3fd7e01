"""The gateway's per-request recording hook: feedback store, analytics, cost, metrics.

Every served completion/chat request is written to the feedback/trajectory store so
feedback can refer to it by ``qlp.request_id``; in-memory analytics and the cost ledger
are updated and the Serve metrics emitted. Rows go through one
:class:`~qlp_ray.serve.telemetry.request_log.RequestLogWriter`, answered requests and the
failures of A/B-assigned requests alike (one path: a crash cannot bias an experiment).
``store.request_log_commit``: ``durable`` (default) waits until the writer committed the
row's group before the reply goes out, so every request id a client holds is in the store;
``background`` (lossy opt-out) replies first, and readers that need a row (feedback on a
request id, the admin reports) wait for it with :meth:`committed` / :meth:`flush`;
``inline`` commits each row alone. A failing store never fails the request: the error is
logged and counted (``store_errors``) and :meth:`record` says the row is not recorded.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from typing import Any

from actors.offload import DeviceOffload
from qlp_ray.core.config import QLPConfig
from qlp_ray.route.embeddings import get_embedder
from qlp_ray.serve.telemetry import metrics
from qlp_ray.serve.telemetry.analytics import Analytics
from qlp_ray.serve.telemetry.cost import CostLedger, PriceTable, external_label, price_entry
from qlp_ray.serve.telemetry.request_log import RequestLogWriter
from qlp_ray.store.database import FeedbackStore
from qlp_ray.store.records import FailureRecord, RequestRecord, build

logger = logging.getLogger(__name__)


class RequestRecorder:
    """Records served requests; owns the gateway's store, analytics and cost ledger."""

    def __init__(self, cfg: QLPConfig, base_model: str) -> None:
        self.cfg = cfg
        self.base_model = base_model
        self.store = FeedbackStore.from_config(cfg)
        self.analytics = Analytics()
        self.cost = CostLedger(PriceTable.load())
        self._store_errors = 0
        self._lock = threading.Lock()  # analytics/ledger are touched from worker threads
        self._embedder: Any = None
        self._offload = DeviceOffload(cfg.router.offload, cfg.hardware)
        self.mode = cfg.store.request_log_commit
        self.writer: RequestLogWriter | None = None
        if self.mode != "inline":
            self.writer = RequestLogWriter(self.store.record_log)

    @property
    def store_errors(self) -> int:
        """Request rows the store refused (inline and background writes)."""
        return self._store_errors + (self.writer.failed if self.writer else 0)

    async def committed(self, request_id: str, timeout: float = 5.0) -> bool:
        """Wait until this replica's row of ``request_id`` (if any) is in the store."""
        if self.writer is None:
            return True
        return await asyncio.to_thread(self.writer.wait_committed, request_id, timeout)

    async def flush(self, timeout: float = 10.0) -> bool:
        """Wait until every row recorded so far by this replica is in the store."""
        if self.writer is None:
            return True
        return await asyncio.to_thread(self.writer.flush, timeout)

    def close(self) -> None:
        """Write what is queued, stop the writer and release the store."""
        if self.writer is not None:
            self.writer.close()
        self.store.close()

    def embed(self, texts: list[str]) -> Any:
        """Prompt embeddings for the label queue (bulk: on the scheduler's device actors per
        ``router.offload``, else the router's model in this process, loaded lazily)."""
        model = self.cfg.router.embedding_model

        def local(batch: list[str]) -> Any:
            if self._embedder is None:
                self._embedder = get_embedder(model)
            return self._embedder.encode(list(batch))

        return self._offload.embed(list(texts), local, model)[0]

    async def record(
        self,
        *,
        request_id: str,
        target: Any,
        prompt: str,
        gen: dict[str, Any],
        latency_s: float,
        user: str | None,
        caller: str | None = None,
    ) -> str:
        """Store, count, price and emit one served request; never raises. Returns the row's
        state: ``committed``, ``queued`` (background mode) or ``failed``."""
        external = getattr(target, "external", None)
        label = external_label(external) if external else target.adapter or self.base_model
        priced_as = price_entry(self.cfg) if external else label  # external: its own price
        routing = None
        if target.routed:
            routing = {"confidence": target.confidence, "fallback": target.adapter is None}
            if external:
                routing["external"] = external
        fields = {
            "id": request_id,
            "model": label,
            "adapter_id": target.adapter,
            "adapter_version": target.version,
            "domain": target.domain,
            "prompt": prompt,
            "response": gen.get("text", ""),
            "latency_ms": round(latency_s * 1000, 3),
            "prompt_tokens": gen.get("prompt_tokens"),
            "completion_tokens": gen.get("completion_tokens"),
            "routing": routing,
            "user_id": user,
            "caller": caller,
            "experiment": getattr(target, "experiment", None),
            "variant": getattr(target, "variant", None),
        }
        state = await self.log(lambda: build(RequestRecord, **fields))
        try:
            with self._lock:
                self.analytics.record_request(label, latency_s, domain=target.domain)
                self.cost.record(
                    priced_as,
                    int(gen.get("prompt_tokens") or 0),
                    int(gen.get("completion_tokens") or 0),
                )
                savings = self.cost.total.to_dict().get("savings_usd", 0.0)
            metrics.record_request(label, target.domain, latency_s)
            metrics.set_cost_savings(float(savings))
        except Exception:
            logger.exception("could not update analytics/metrics for request %s", request_id)
        return state

    async def record_failure(
        self,
        request_id: str,
        experiment: str,
        variant: str,
        *,
        status: int,
        latency_s: float | None,
        user: str | None,
    ) -> str:
        """Log an A/B-assigned request that failed, on the same path as answered ones."""
        return await self.log(lambda: build(
            FailureRecord, id=request_id, experiment=experiment, variant=variant,
            status=status, error=f"http_{status}", user_id=user,
            latency_ms=None if latency_s is None else round(latency_s * 1000, 3),
        ))  # fmt: skip

    async def log(self, make: Any) -> str:
        """Write the row ``make()`` builds as the mode says; never raises."""
        try:
            row = make()
            if self.writer is None:
                await asyncio.to_thread(self.store.record_log, [row])
                return "committed"
            if self.mode == "background":
                await self._submit(row, None)
                return "queued"
            loop = asyncio.get_running_loop()
            done: asyncio.Future[bool] = loop.create_future()

            def resolve(ok: bool) -> None:  # on the writer thread, after COMMIT
                loop.call_soon_threadsafe(_settle, done, ok)

            await self._submit(row, resolve)
            if await done:
                return "committed"
            return "failed"  # the writer counted and logged it
        except Exception:  # the request was answered; losing its row must not fail it
            self._store_errors += 1
            logger.exception("could not record a row in the feedback store")
            return "failed"

    async def _submit(self, row: Any, on_commit: Any) -> None:
        assert self.writer is not None
        if self.writer.full():  # the store lags behind: wait for room off the event loop
            await asyncio.to_thread(self.writer.submit, row, on_commit)
        else:
            self.writer.submit(row, on_commit)

    def record_feedback(self, request_id: str, kind: str, value: float | None) -> None:
        """Mirror stored feedback into the per-adapter analytics."""
        try:
            rec = self.store.get_request(request_id)
            with self._lock:
                self.analytics.record_feedback(
                    rec.adapter_id or rec.model,
                    thumbs=(value > 0) if kind == "thumbs" and value is not None else None,
                    rating=int(value) if kind == "rating" and value is not None else None,
                    accuracy=value if kind == "accuracy" else None,
                )
        except Exception:
            logger.exception("could not add feedback on %s to analytics", request_id)

    def report(self) -> dict[str, Any]:
        with self._lock:
            return {
                "object": "analytics",
                "adapters": self.analytics.snapshot(),
                "cost": self.cost.report(),
                "store_errors": self.store_errors,
                "request_log": {"mode": self.cfg.store.request_log_commit}
                | (self.writer.stats() if self.writer else {}),
            }


def _settle(future: asyncio.Future[bool], ok: bool) -> None:
    if not future.done():  # the waiting request may have been cancelled
        future.set_result(ok)
