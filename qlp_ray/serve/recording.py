"""The gateway's per-request recording hook: feedback store, analytics, cost, metrics.

Every served completion/chat request is written to the feedback/trajectory store (off
the event loop) so feedback can refer to it by ``qlp.request_id``; in-memory analytics
and the cost ledger are updated and the Serve metrics emitted. A failing store never
fails the request: the error is logged and counted.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from typing import Any

from qlp_ray.config import QLPConfig
from qlp_ray.improve.analytics import Analytics
from qlp_ray.improve.cost import CostLedger, PriceTable
from qlp_ray.improve.store import FeedbackStore
from qlp_ray.serve import metrics
from qlp_ray.serve.external import external_label, price_entry

logger = logging.getLogger(__name__)


class RequestRecorder:
    """Records served requests; owns the gateway's store, analytics and cost ledger."""

    def __init__(self, cfg: QLPConfig, base_model: str) -> None:
        self.cfg = cfg
        self.base_model = base_model
        self.store = FeedbackStore.from_config(cfg)
        self.analytics = Analytics()
        self.cost = CostLedger(PriceTable.load())
        self.store_errors = 0
        self._lock = threading.Lock()  # analytics/ledger are touched from worker threads
        self._embedder: Any = None

    def embed(self, texts: list[str]) -> Any:
        """Prompt embeddings for the label queue (the router's encoder, loaded lazily)."""
        from qlp_ray.route.embeddings import get_embedder

        if self._embedder is None:
            self._embedder = get_embedder(self.cfg.router.embedding_model)
        return self._embedder.encode(list(texts))

    async def record(
        self,
        *,
        request_id: str,
        target: Any,
        prompt: str,
        gen: dict[str, Any],
        latency_s: float,
        user: str | None,
    ) -> None:
        """Store, count, price and emit one served request; never raises."""
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
            "experiment": getattr(target, "experiment", None),
            "variant": getattr(target, "variant", None),
        }
        try:
            await asyncio.to_thread(self.store.record_request, **fields)
        except Exception:  # the request was served; losing its log must not fail it
            self.store_errors += 1
            logger.exception("could not record request %s in the feedback store", request_id)
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
            }
