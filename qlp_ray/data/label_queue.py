"""The label queue: served requests without feedback, ranked by how much a label would help.

Uncertainty comes from the router's own decision stored with each request
(``routing.scores``: cosine per adapter -> softmax with a temperature); MC-dropout
re-scores the request embedding against per-domain centroids under random dropout
masks; diversity and near-duplicate filtering use prompt embeddings. Weak areas from
the analytics (low ratings, many thumbs-down per domain) weigh their requests up.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from qlp_ray.data.active_learning import Selection, select_batch
from qlp_ray.route.centroid import compute_centroid

if TYPE_CHECKING:
    from qlp_ray.core.config import ActiveLearningConfig
    from qlp_ray.store.database import AdapterStats, FeedbackStore

logger = logging.getLogger(__name__)

EmbedFn = Callable[[list[str]], np.ndarray]


@dataclass(frozen=True)
class LabelItem:
    request_id: str
    prompt: str
    response: str
    domain: str | None
    score: float
    priority: str
    method: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def weak_area_weights(stats: Sequence[AdapterStats]) -> dict[str, float]:
    """Per-domain weight ``1 + thumbs-down rate + (5 - mean rating) / 4`` (1 when no data):
    domains users are unhappy with get labelled (and retrained) first."""
    weights: dict[str, list[float]] = {}
    for s in stats:
        if s.domain is None:
            continue
        w = 1.0 + (s.thumbs_down_rate or 0.0)
        if s.mean_rating is not None:
            w += (5.0 - s.mean_rating) / 4.0
        weights.setdefault(s.domain, []).append(w)
    return {d: float(np.mean(ws)) for d, ws in weights.items()}


def routing_probs(routing: dict | None, labels: Sequence[str], temperature: float) -> np.ndarray:
    """Softmax over the router's per-target cosine scores (uniform when none were stored)."""
    scores = (routing or {}).get("scores") or {}
    if not scores:
        return np.full(len(labels), 1.0 / len(labels))
    logits = np.array([scores.get(lbl, -1.0) for lbl in labels], dtype=np.float64) / temperature
    p = np.exp(logits - logits.max())
    return p / p.sum()


def centroid_mc_dropout(
    embeddings: np.ndarray,
    centroids: np.ndarray,
    *,
    passes: int,
    rate: float,
    temperature: float,
    seed: int = 0,
) -> np.ndarray:
    """``(passes, n, C)`` class probabilities with inverted dropout on embedding dimensions."""
    rng = np.random.default_rng(seed)
    x = np.asarray(embeddings, dtype=np.float32)
    out = np.empty((passes, len(x), len(centroids)))
    for t in range(passes):
        mask = (rng.random(x.shape) >= rate).astype(np.float32) / (1.0 - rate)
        logits = ((x * mask) @ centroids.T) / temperature
        p = np.exp(logits - logits.max(axis=1, keepdims=True))
        out[t] = p / p.sum(axis=1, keepdims=True)
    return out


def next_to_label(
    store: FeedbackStore,
    embed: EmbedFn,
    cfg: ActiveLearningConfig,
    *,
    k: int | None = None,
    method: str | None = None,
) -> list[LabelItem]:
    """The ``k`` unlabelled requests most worth a label, best first."""
    method = method or cfg.method
    k = k or cfg.k
    labelled_ids = {f.request_id for f in store.query_feedback()}
    recent = store.query_requests()[-cfg.pool_limit :]
    pool = [r for r in recent if r.id not in labelled_ids]
    if not pool:
        return []
    labelled = [r for r in recent if r.id in labelled_ids]
    targets = sorted({t for r in pool for t in ((r.routing or {}).get("scores") or {})})
    domains = sorted({r.domain for r in recent if r.domain})
    need_emb = method in ("diversity", "mc_dropout") or cfg.duplicate_threshold is not None
    emb = embed([r.prompt for r in pool]) if need_emb else None
    lab_emb = embed([r.prompt for r in labelled]) if need_emb and labelled else None
    kwargs: dict[str, Any] = {}
    if method in ("entropy", "margin", "least_confidence", "random"):
        labels = targets or ["_"]
        kwargs["probs"] = np.stack(
            [routing_probs(r.routing, labels, cfg.temperature) for r in pool]
        ) if len(labels) > 1 else np.full((len(pool), 2), 0.5)  # fmt: skip
    elif method == "mc_dropout":
        kwargs["prob_samples"] = _mc_samples(pool, labelled, emb, lab_emb, domains, cfg)
    weights = weak_area_weights(store.adapter_stats()) if cfg.weak_area_weighting else None
    picks: list[Selection] = select_batch(
        method, k, embeddings=emb, labelled_embeddings=lab_emb,
        tasks=[r.domain or "unknown" for r in pool], task_weights=weights,
        duplicate_threshold=cfg.duplicate_threshold, high_quantile=cfg.high_quantile,
        medium_quantile=cfg.medium_quantile, **kwargs,
    )  # fmt: skip
    return [
        LabelItem(
            pool[s.index].id,
            pool[s.index].prompt,
            pool[s.index].response,
            pool[s.index].domain,
            round(s.score, 6),
            s.priority,
            method,
        )  # fmt: skip
        for s in picks
    ]


def _mc_samples(pool, labelled, emb, lab_emb, domains, cfg) -> np.ndarray:
    """Per-domain centroids of every routed request's embedding, then dropout passes."""

    all_emb = emb if lab_emb is None else np.concatenate([emb, lab_emb])
    all_dom = [r.domain for r in pool] + [r.domain for r in labelled]
    cents = [
        compute_centroid(all_emb[[i for i, d in enumerate(all_dom) if d == dom]]) for dom in domains
    ]
    if len(cents) < 2:
        return np.full((2, len(pool), 2), 0.5)
    return centroid_mc_dropout(
        emb, np.stack(cents), passes=cfg.mc_passes, rate=cfg.mc_dropout, temperature=cfg.temperature
    )
