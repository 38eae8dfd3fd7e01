"""Router deployment: embed the request's routing text, pick the adapter that serves it.

Modes (``router.mode``): ``centroid`` picks the nearest adapter centroid by cosine;
``learned`` loads the calibrated gating router from ``router.learned_dir`` (``qlp router
train``) and sends its predicted domain to the newest adapter of that domain. Texts of
concurrent requests are embedded together (``@serve.batch``).

The routing table is built from the registry's *verified* adapters (centroid from each
adapter's ``qlp.json``) and rebuilt by :meth:`RouterDeployment.refresh` — on
``GET /v1/models``, ``POST /v1/admin/routes/refresh``, when the registry's generation
marker moved (checked every ``router.generation_poll_s`` on the request path and on a
``GET /v1/admin/routes`` read: register, promote and retire take effect at once) and at
least every ``router.refresh_interval_s`` — so adapters registered, promoted or retired
while Serve runs are routed accordingly without a restart. With ``router.top_k > 1`` a
request between domains may be routed to a composed stack (:mod:`qlp_ray.route.stacking`).

Batch work goes to the hardware scheduler's device actors (``router.offload``,
:mod:`actors.offload`): :meth:`RouterDeployment.route_offline` (a labelled file's rows,
``POST /v1/admin/routes/evaluate``) embeds them as ``embedding`` workloads and runs the
centroid search as one ``vector_search`` workload; a routed request embeds and searches in
this replica unless ``offload: always`` (then its centroid search goes to a device too).
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

from actors.offload import DeviceOffload
from qlp_ray.core.config import QLPConfig, resolve_config
from qlp_ray.core.errors import QLPError
from qlp_ray.hardware.offload import Placement, chunk_bounds, wants_devices
from qlp_ray.models.base import base_model_id
from qlp_ray.registry.generation import GenerationWatch
from qlp_ray.registry.store import Registry
from qlp_ray.route.centroid import CentroidRouter, RouteDecision, RouteEntry
from qlp_ray.route.embeddings import embedding_cache_dir, get_embedder
from qlp_ray.route.learned import LearnedRouter, targets_by_domain
from qlp_ray.route.openvino_embedder import OpenVINOEmbedder
from qlp_ray.route.stacking import RouteTarget, StackPolicy, decide
from qlp_ray.serve.admission import deployment_limits, replica_options
from qlp_ray.serve.telemetry.metrics import record_route

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

    def __init__(self, config: dict[str, Any], *, encode_in_thread: bool = False) -> None:

        self.cfg = resolve_config(config)  # secrets from this node (core/config/secrets.py)
        self.mode = self.cfg.router.mode
        self._learned = None
        embedding_model = self.cfg.router.embedding_model
        if self.mode == "learned":
            path = self.cfg.router.learned_path(self.cfg.paths.root)
            self._learned = LearnedRouter.load(path)  # ConfigError names the missing files
            logger.info("learned router from %s: domains %s", path, self._learned.labels)
            # hook (routeracc): a router trained on a fine-tuned embedder ships it; use it
            tuned = LearnedRouter.embedder_dir(path)
            if tuned is not None:
                embedding_model = str(tuned)
        self.embedder = router_embedder(self.cfg, embedding_model)
        self._embedding_model = embedding_model
        self._offload = DeviceOffload(self.cfg.router.offload, self.cfg.hardware)
        self._encode_in_thread = encode_in_thread  # in a gateway: keep its event loop free
        self._route_batch.set_max_batch_size(self.cfg.router.max_batch_size)
        self._route_batch.set_batch_wait_timeout_s(self.cfg.router.batch_wait_timeout_s)
        self._batches = self._batched_texts = 0
        self._batch_seconds = 0.0
        self._refresh_task: asyncio.Task | None = None
        self.registry = Registry(self.cfg)
        self.base_model = base_model_id(self.cfg)
        self._table = RouteTable([], {})
        self._router = CentroidRouter([], self.cfg.router.threshold)
        self._refreshed_at = 0.0
        self._refresh_lock = asyncio.Lock()
        r = self.cfg.router
        self._watch = GenerationWatch(self.registry.generation, r.generation_poll_s)
        self._policy = StackPolicy(r.top_k, r.stack_min_share, r.stack_weight_decimals,
                                   additive=self._learned is not None)  # fmt: skip
        self._rebuild()

    def _verify(self, adapter_id: str, version: int) -> Any:
        # reuse: a table refresh re-hashes (and audits) only versions whose files changed;
        # the compositor still verifies in full before it loads one
        return self.registry.verify(
            adapter_id, version, expected_base_model=self.base_model, reuse=True
        )

    def _rebuild(self) -> dict[str, Any]:
        generation = self._watch.snapshot()  # before listing: a later change is seen later
        table = build_route_table(self.registry.list(), self._verify, self.embedder.dim)
        router = CentroidRouter(table.entries, self.cfg.router.threshold)
        targets = targets_by_domain(
            (e.adapter_id, e.domain, table.versions[e.adapter_id]) for e in table.entries
        )
        by_domain = self._learned is not None  # learned scores are per domain
        stacks = stack_targets(table, targets, by_domain=by_domain)
        # built first, swapped together: batches routing meanwhile see the old or the new table
        self._table, self._router, self._targets, self._stack_targets = (
            table,
            router,
            targets,
            stacks,
        )
        self._refreshed_at = time.monotonic()
        self._watch.commit(generation)
        logger.info(
            "routing table: %d adapters, %d skipped", len(table.entries), len(table.skipped)
        )
        return self.held_table()

    async def refresh(self) -> dict[str, Any]:
        """Rebuild the routing table from the registry; returns the new table."""
        async with self._refresh_lock:
            return await asyncio.to_thread(self._rebuild)

    async def table(self) -> dict[str, Any]:
        """The routing table, brought up to date first as a routing call does: rebuilt when
        the registry's generation marker moved (read at most every
        ``router.generation_poll_s``), so a table read follows register/promote/retire
        without waiting for routed traffic."""
        await self._current_table()
        return self.held_table()

    def held_table(self) -> dict[str, Any]:
        """The routing table as this replica holds it now (no registry read)."""
        return {
            "adapters": {
                e.adapter_id: {"domain": e.domain, "version": self._table.versions[e.adapter_id]}
                for e in self._table.entries
            },
            "skipped": dict(self._table.skipped),
            "mode": self.mode,
            "threshold": self._threshold(),
            "top_k": self._policy.top_k,
            "stack_min_share": self._policy.min_share,
            "fallback": self.cfg.router.fallback,
            "generation": self._watch.seen,
            "refreshed_s_ago": round(time.monotonic() - self._refreshed_at, 3),
        }

    def _threshold(self) -> float:
        if self._learned is None:
            return self._router.threshold
        override = self.cfg.router.learned_threshold
        return self._learned.threshold if override is None else override

    # The size and wait are set per replica from the config in __init__. In the Router
    # deployment the handler runs the encoder on the replica's event loop on purpose: texts
    # arriving meanwhile queue up and form the next batch as soon as this one is done, so
    # batches grow with the load while a lone text is embedded at once (a timer-based wait
    # would delay every text). Inside a gateway (placement: gateway) it runs in a thread.
    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.0)
    async def _route_batch(self, texts: list[str]) -> list[dict[str, Any]]:
        """Embed and route the texts of concurrent requests in one encoder call."""
        return await self._route_texts(texts)

    async def _route_texts(self, texts: list[str]) -> list[dict[str, Any]]:
        t0 = time.perf_counter()
        if self._encode_in_thread:
            vecs = await asyncio.to_thread(self.embedder.encode, list(texts))
        else:
            vecs = self.embedder.encode(list(texts))
        found, _ = await self._search(vecs, list(texts), "request")
        self._batches += 1
        self._batched_texts += len(texts)
        self._batch_seconds += time.perf_counter() - t0
        return self._decisions(found, record=True)

    async def _search(
        self, vecs: np.ndarray, texts: list[str], scope: str
    ) -> tuple[list[RouteDecision], Placement]:
        """The decisions for ``vecs``; the centroid search runs on a device actor when
        ``router.offload`` sends work of ``scope`` there (``learned`` scores here)."""
        if self._learned is not None:
            found = self._learned.route_batch(
                vecs, texts, targets=self._targets, threshold=self._threshold()
            )
            return found, Placement("vector_search", "process", "learned mode scores here")
        router = self._router
        if not router.entries or not wants_devices(self._offload.mode, scope):
            reason = (f"router.offload {self._offload.mode!r} keeps {scope} search here"
                      if router.entries else "no routable adapter")  # fmt: skip
            return router.route_batch(vecs), Placement("vector_search", "process", reason)
        n = len(router.entries)
        scores, idx, placement = await asyncio.to_thread(
            self._offload.search, vecs, router.matrix, n, lambda q: q @ router.matrix.T, scope
        )
        sims = np.empty((len(vecs), n), dtype=np.float32)
        np.put_along_axis(sims, np.asarray(idx, dtype=np.int64), scores, axis=1)
        return router.decide(sims), placement

    def _decisions(self, found: list[RouteDecision], *, record: bool) -> list[dict[str, Any]]:
        decisions = []
        for d in found:
            decision = d.to_dict()
            if self._policy.top_k > 1:
                decision.update(
                    decide(decision["scores"], self._stack_targets, self._threshold(), self._policy)
                )
            else:
                decision["version"] = self._table.versions.get(decision["target"] or "")
                decision["stack"] = None
            if record:
                record_route(self.mode, decision["confidence"], decision["fallback"])
            decision["mode"] = self.mode
            decisions.append(decision)
        return decisions

    def _encode_chunked(self, texts: list[str]) -> np.ndarray:
        chunk = self.cfg.router.max_batch_size
        parts = [self.embedder.encode(texts[a:b]) for a, b in chunk_bounds(len(texts), chunk)]
        return np.concatenate(parts) if parts else np.zeros((0, self.embedder.dim), np.float32)

    async def route_offline(self, texts: list[str]) -> dict[str, Any]:
        """Route many texts as batch work (a labelled file's rows, not traffic: no routing
        metrics): embedded by the scheduler's device actors (``embedding`` workloads) and
        searched there (one ``vector_search``) per ``router.offload``, else in this replica.
        Returns ``{"decisions": [...], "computed_on": {"embedding": ..., "search": ...}}``.
        A device embeds with its own backend (torch f32, or OpenVINO f32 on NPU/Arc), so a
        decision can differ from the live encoder's (bf16 where the CPU has it) only for a
        text whose confidence sits within that rounding of the threshold."""
        texts = list(texts)
        await self._current_table()
        vecs, embedded = await asyncio.to_thread(
            self._offload.embed, texts, self._encode_chunked, self._embedding_model
        )
        found, searched = await self._search(vecs, texts, "batch")
        return {
            "decisions": self._decisions(found, record=False),
            "computed_on": {"embedding": embedded.to_dict(), "search": searched.to_dict()},
        }

    def offload_stats(self) -> dict[str, Any]:
        """``router.offload`` and how many pieces of work ran on devices / in process."""
        return {"mode": self._offload.mode, **self._offload.counts}

    def batch_stats(self) -> dict[str, float]:
        """Batches, texts and seconds spent embedding + deciding since start."""
        return {
            "batches": self._batches,
            "texts": self._batched_texts,
            "seconds": round(self._batch_seconds, 4),
        }

    def _refresh_in_background(self) -> None:
        """Start a table rebuild unless one runs; requests keep the current table meanwhile."""
        if self._refresh_task is None or self._refresh_task.done():
            self._refreshed_at = time.monotonic()  # one rebuild per interval, even if slow
            self._refresh_task = asyncio.get_running_loop().create_task(self.refresh())

    async def _current_table(self) -> None:
        """Rebuild the table now if the registry moved; in the background if it is old."""
        if await self._watch.changed_async():  # registered/promoted/retired: route anew
            await self.refresh()
        elif time.monotonic() - self._refreshed_at > self.cfg.router.refresh_interval_s:
            self._refresh_in_background()

    async def route(self, text: str) -> dict[str, Any]:
        """Route one text: ``{target, version, domain, confidence, fallback, scores, route_ms}``."""
        await self._current_table()
        t0 = time.perf_counter()
        decision = dict(await self._route_batch(text))
        decision["route_ms"] = round((time.perf_counter() - t0) * 1000, 3)
        return decision

    async def route_many(self, texts: list[str]) -> list[dict[str, Any]]:
        """Route the texts of one caller's concurrent requests (``serve/route_client.py``).
        They are already a batch: one encoder call, without a trip per text through
        ``@serve.batch`` (its bookkeeping costs about a tenth of a packed batch's time)."""
        texts = list(texts)
        if len(texts) <= 1:
            return [await self.route(text) for text in texts]
        await self._current_table()
        t0 = time.perf_counter()
        decisions = await self._route_texts(texts)
        route_ms = round((time.perf_counter() - t0) * 1000, 3)
        return [{**d, "route_ms": route_ms} for d in decisions]


def router_embedder(cfg: QLPConfig, model: str | None = None) -> Any:
    """The router's encoder of ``model`` (default ``router.embedding_model``): the cached
    OpenVINO IR (default) or sentence-transformers."""
    r = cfg.router
    model = model or r.embedding_model
    if r.embedding_backend == "torch":
        return get_embedder(model)

    return OpenVINOEmbedder(
        model,
        embedding_cache_dir(cfg.paths.root),
        streams=r.embedding_streams,
        precision=r.embedding_precision,
        max_tokens=r.max_routing_tokens,
        packing=r.embedding_packing,
        device=r.embedding_device,
    )


def stack_targets(
    table: RouteTable, domain_targets: dict[str, str], *, by_domain: bool
) -> dict[str, RouteTarget]:
    """What each scored key routes to: adapters (centroid scores) or domains (learned)."""
    domains = {e.adapter_id: e.domain for e in table.entries}
    if by_domain:
        return {d: RouteTarget(a, d, table.versions[a]) for d, a in domain_targets.items()}
    return {a: RouteTarget(a, d, table.versions[a]) for a, d in domains.items()}


def router_deployment(cfg: QLPConfig) -> Any:
    """The Serve deployment object of the router, sized for ``cfg``."""
    return serve.deployment(
        name="Router",
        ray_actor_options=replica_options(
            cfg.serve.router_num_cpus, cfg.serve.router_num_gpus, cfg.serve.router_resources
        ),
        **deployment_limits(cfg.serve, "router"),
        # one access-log line per routing call costs more than the decision; the gateway
        # logs every request anyway
        logging_config={"enable_access_log": False},
    )(RouterDeployment)
