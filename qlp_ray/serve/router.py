"""Router deployment: embed the request's routing text, pick the adapter that serves it.

Modes (``router.mode``): ``centroid`` picks the nearest adapter centroid by cosine;
``learned`` loads the calibrated gating router from ``router.learned_dir`` (``qlp router
train``) and sends its predicted domain to the newest adapter of that domain. Texts of
concurrent requests are embedded together (``@serve.batch``).

The routing table is built from the registry's *verified* adapters (centroid from each
adapter's ``qlp.json``) and rebuilt by :meth:`RouterDeployment.refresh` — on
``GET /v1/models`` and at most every ``router.refresh_interval_s`` on the request path —
so adapters registered later become routable without a restart.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from ray import serve

from qlp_ray.config import QLPConfig
from qlp_ray.errors import QLPError
from qlp_ray.route.centroid import CentroidRouter, RouteEntry
from qlp_ray.route.learned import targets_by_domain
from qlp_ray.serve.metrics import record_route

logger = logging.getLogger(__name__)


@dataclass
class RouteTable:
    """The routable adapters and why the others were left out."""

    entries: list[RouteEntry]
    versions: dict[str, int]
    skipped: dict[str, str] = field(default_factory=dict)


def build_route_table(
    records: Iterable[Any], verify: Callable[[str, int], Any], dim: int
) -> RouteTable:
    """Route entries for every record that verifies and carries a ``dim``-sized centroid.

    ``records`` are registry records (``adapter_id``, ``domain``, ``version``,
    ``metadata``); ``verify(adapter_id, version)`` raises a ``QLPError`` when the adapter
    must not be served.
    """
    entries: list[RouteEntry] = []
    versions: dict[str, int] = {}
    skipped: dict[str, str] = {}
    for rec in records:
        centroid = (rec.metadata or {}).get("centroid")
        if centroid is None:
            skipped[rec.adapter_id] = "no centroid in qlp.json"
            continue
        vec = np.asarray(centroid, dtype=np.float32)
        norm = float(np.linalg.norm(vec)) if vec.ndim == 1 else 0.0
        if vec.shape != (dim,) or norm == 0.0:
            skipped[rec.adapter_id] = f"centroid must be a non-zero vector of {dim} floats"
            continue
        try:
            verify(rec.adapter_id, rec.version)
        except QLPError as exc:
            skipped[rec.adapter_id] = f"verification failed: {exc.message}"
            continue
        entries.append(RouteEntry(rec.adapter_id, rec.domain, vec / norm))
        versions[rec.adapter_id] = int(rec.version)
    for adapter_id, reason in skipped.items():
        logger.warning("adapter %s not routable: %s", adapter_id, reason)
    return RouteTable(entries, versions, skipped)


class RouterDeployment:
    """Serve deployment wrapping the embedder and a :class:`CentroidRouter`."""

    def __init__(self, config: dict[str, Any]) -> None:
        from qlp_ray.models.base import base_model_id
        from qlp_ray.registry.store import Registry
        from qlp_ray.route.embeddings import get_embedder

        self.cfg = QLPConfig.model_validate(config)
        self.mode = self.cfg.router.mode
        self._learned = None
        embedding_model = self.cfg.router.embedding_model
        if self.mode == "learned":
            from qlp_ray.route.learned import LearnedRouter

            path = self.cfg.router.learned_path(self.cfg.paths.root)
            self._learned = LearnedRouter.load(path)  # ConfigError names the missing files
            logger.info("learned router from %s: domains %s", path, self._learned.labels)
            # hook (routeracc): a router trained on a fine-tuned embedder ships it; use it
            tuned = LearnedRouter.embedder_dir(path)
            if tuned is not None:
                embedding_model = str(tuned)
        self.embedder = get_embedder(embedding_model)
        self.registry = Registry(self.cfg)
        self.base_model = base_model_id(self.cfg)
        self._table = RouteTable([], {})
        self._router = CentroidRouter([], self.cfg.router.threshold)
        self._refreshed_at = 0.0
        self._refresh_lock = asyncio.Lock()
        self._rebuild()

    def _verify(self, adapter_id: str, version: int) -> Any:
        return self.registry.verify(adapter_id, version, expected_base_model=self.base_model)

    def _rebuild(self) -> dict[str, Any]:
        table = build_route_table(self.registry.list(), self._verify, self.embedder.dim)
        self._table = table
        self._router = CentroidRouter(table.entries, self.cfg.router.threshold)
        self._targets = targets_by_domain(
            (e.adapter_id, e.domain, table.versions[e.adapter_id]) for e in table.entries
        )
        self._refreshed_at = time.monotonic()
        logger.info(
            "routing table: %d adapters, %d skipped", len(table.entries), len(table.skipped)
        )
        return self.table()

    async def refresh(self) -> dict[str, Any]:
        """Rebuild the routing table from the registry; returns the new table."""
        async with self._refresh_lock:
            return await asyncio.to_thread(self._rebuild)

    def table(self) -> dict[str, Any]:
        return {
            "adapters": {
                e.adapter_id: {"domain": e.domain, "version": self._table.versions[e.adapter_id]}
                for e in self._table.entries
            },
            "skipped": dict(self._table.skipped),
            "mode": self.mode,
            "threshold": self._threshold(),
        }

    def _threshold(self) -> float:
        if self._learned is None:
            return self._router.threshold
        override = self.cfg.router.learned_threshold
        return self._learned.threshold if override is None else override

    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.002)
    async def _embed(self, texts: list[str]) -> list[np.ndarray]:
        """Concurrent requests' texts are embedded in one encoder call."""
        vecs = await asyncio.to_thread(self.embedder.encode, list(texts))
        return list(vecs)

    async def route(self, text: str) -> dict[str, Any]:
        """Route one text: ``{target, version, domain, confidence, fallback, scores, route_ms}``."""
        if time.monotonic() - self._refreshed_at > self.cfg.router.refresh_interval_s:
            await self.refresh()
        t0 = time.perf_counter()
        vec = await self._embed(text)
        if self._learned is not None:
            decision = self._learned.route_batch(
                vec[None, :], [text], targets=self._targets, threshold=self._threshold()
            )[0].to_dict()
        else:
            decision = self._router.route(vec).to_dict()
        record_route(self.mode, decision["confidence"], decision["fallback"])
        decision["mode"] = self.mode
        decision["version"] = self._table.versions.get(decision["target"] or "")
        decision["route_ms"] = round((time.perf_counter() - t0) * 1000, 3)
        return decision


def router_deployment(cfg: QLPConfig) -> Any:
    """The Serve deployment object of the router, sized for ``cfg``."""
    return serve.deployment(
        name="Router", ray_actor_options={"num_cpus": cfg.serve.router_num_cpus}
    )(RouterDeployment)
