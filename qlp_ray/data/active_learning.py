"""Active learning: which unlabelled examples are most worth a label.

Five scoring methods, pure numpy:

- ``entropy``: ``-Σ p log p`` of the predicted class distribution;
- ``margin``: ``1 - (p₁ - p₂)``, the gap between the two most likely classes;
- ``least_confidence``: ``1 - max p``;
- ``mc_dropout``: variance of class probabilities across stochastic (dropout) passes;
- ``diversity``: k-center greedy on embeddings (each pick is the point farthest from
  everything labelled or already picked).

Selection then applies per-task weights (e.g. domains the analytics flag as weak),
drops near-duplicates (cosine above a threshold to anything labelled or picked),
takes the top ``k`` and assigns priority levels by score percentile.

Nearest-neighbour similarities use ``qlp_ray.route.vector.topk`` (the Cython kernel) when
that module is installed, else numpy; ``NN_BACKEND`` says which.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from qlp_ray.core.errors import InvalidRequest

logger = logging.getLogger(__name__)

Method = Literal["entropy", "margin", "least_confidence", "mc_dropout", "diversity", "random"]
METHODS: tuple[str, ...] = (
    "entropy",
    "margin",
    "least_confidence",
    "mc_dropout",
    "diversity",
    "random",
)
Priority = Literal["high", "medium", "low"]

try:  # the vector-search kernel (engineer `hw`); numpy otherwise
    from qlp_ray.route.vector import topk as _kernel_topk

    NN_BACKEND = "qlp_ray.route.vector"
except ImportError:  # pragma: no cover - depends on which modules are installed
    _kernel_topk = None
    NN_BACKEND = "numpy"


def _check_probs(probs: np.ndarray) -> np.ndarray:
    p = np.asarray(probs, dtype=np.float64)
    if p.ndim != 2 or p.shape[1] < 2:
        raise InvalidRequest(f"probabilities must be (n, classes >= 2), got shape {p.shape}")
    if np.any(p < -1e-9) or not np.allclose(p.sum(axis=1), 1.0, atol=1e-4):
        raise InvalidRequest("each row of probabilities must be non-negative and sum to 1")
    return np.clip(p, 0.0, 1.0)


def entropy_scores(probs: np.ndarray) -> np.ndarray:
    p = _check_probs(probs)
    return -(p * np.log(np.where(p > 0, p, 1.0))).sum(axis=1)


def margin_scores(probs: np.ndarray) -> np.ndarray:
    p = np.sort(_check_probs(probs), axis=1)
    return 1.0 - (p[:, -1] - p[:, -2])


def least_confidence_scores(probs: np.ndarray) -> np.ndarray:
    return 1.0 - _check_probs(probs).max(axis=1)


def mc_dropout_scores(prob_samples: np.ndarray) -> np.ndarray:
    """Mean over classes of the variance across ``T`` dropout passes; input ``(T, n, C)``."""
    s = np.asarray(prob_samples, dtype=np.float64)
    if s.ndim != 3 or s.shape[0] < 2:
        raise InvalidRequest(f"MC-dropout needs (passes >= 2, n, classes), got shape {s.shape}")
    return s.var(axis=0).mean(axis=1)


def nearest_similarity(queries: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Cosine similarity of each query row to its nearest reference row (-1 if none)."""
    q = np.ascontiguousarray(queries, dtype=np.float32)
    if len(reference) == 0:
        return np.full(len(q), -1.0, dtype=np.float32)
    ref = np.ascontiguousarray(reference, dtype=np.float32)
    if _kernel_topk is not None:
        scores, _ = _kernel_topk(q, ref, 1, metric="cosine")
        return np.asarray(scores, dtype=np.float32).reshape(-1)
    qn = q / np.maximum(np.linalg.norm(q, axis=1, keepdims=True), 1e-12)
    rn = ref / np.maximum(np.linalg.norm(ref, axis=1, keepdims=True), 1e-12)
    return (qn @ rn.T).max(axis=1)


def k_center_greedy(
    embeddings: np.ndarray, k: int, labelled: np.ndarray | None = None
) -> tuple[list[int], np.ndarray]:
    """Farthest-first traversal: ``k`` pool indices and each pick's cosine distance to the
    nearest labelled-or-picked point at the time it was picked (its diversity score)."""
    x = np.asarray(embeddings, dtype=np.float32)
    x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    k = min(int(k), len(x))
    ref = np.zeros((0, x.shape[1]), np.float32) if labelled is None else np.asarray(labelled)
    if len(ref):
        min_dist = 1.0 - nearest_similarity(x, ref).astype(np.float64)
    else:
        min_dist = np.full(len(x), np.inf)
    picks: list[int] = []
    gains = []
    for _ in range(k):
        if np.isinf(min_dist).all():  # nothing labelled yet: start at the most central point
            idx = int(np.argmax(x @ x.mean(axis=0)))
            gain = 2.0
        else:
            idx = int(np.argmax(min_dist))
            gain = float(min_dist[idx])
        picks.append(idx)
        gains.append(gain)
        min_dist = np.minimum(min_dist, 1.0 - (x @ x[idx]).astype(np.float64))
        min_dist[picks] = -np.inf
    return picks, np.asarray(gains)


@dataclass(frozen=True)
class Selection:
    """One example chosen for labelling."""

    index: int
    score: float
    priority: Priority
    task: str | None = None


def priority_levels(
    scores: np.ndarray, high_quantile: float = 0.9, medium_quantile: float = 0.6
) -> list[Priority]:
    """high / medium / low by each score's percentile within the pool."""
    if not 0 <= medium_quantile <= high_quantile <= 1:
        raise InvalidRequest(
            f"need 0 <= medium_quantile ({medium_quantile}) <= high_quantile ({high_quantile}) <= 1"
        )
    s = np.asarray(scores, dtype=np.float64)
    if len(s) == 0:
        return []
    hi, med = np.quantile(s, high_quantile), np.quantile(s, medium_quantile)
    return ["high" if v >= hi else "medium" if v >= med else "low" for v in s]


def select_batch(
    method: str,
    k: int,
    *,
    probs: np.ndarray | None = None,
    prob_samples: np.ndarray | None = None,
    embeddings: np.ndarray | None = None,
    labelled_embeddings: np.ndarray | None = None,
    tasks: Sequence[str] | None = None,
    task_weights: Mapping[str, float] | None = None,
    duplicate_threshold: float | None = 0.95,
    high_quantile: float = 0.9,
    medium_quantile: float = 0.6,
    seed: int = 0,
) -> list[Selection]:
    """Pick up to ``k`` pool indices to label, best first, with priorities.

    ``probs`` ``(n, C)`` feeds entropy/margin/least_confidence; ``prob_samples``
    ``(T, n, C)`` feeds mc_dropout; ``embeddings`` ``(n, d)`` feed diversity and the
    near-duplicate filter. ``task_weights`` multiply the scores of each task (unlisted
    tasks weigh 1).
    """
    if method not in METHODS:
        raise InvalidRequest(f"unknown active-learning method {method!r}; choose from {METHODS}")
    if k < 1:
        raise InvalidRequest(f"k must be >= 1, got {k}")
    n = _pool_size(probs, prob_samples, embeddings)
    if tasks is not None and len(tasks) != n:
        raise InvalidRequest(f"tasks has {len(tasks)} entries for a pool of {n}")
    if method == "diversity":
        if embeddings is None:
            raise InvalidRequest("method 'diversity' needs embeddings")
        # Greedy order beyond ~2k picks is never used; unpicked points score 0.
        order, gains = k_center_greedy(embeddings, min(n, 2 * k + 10), labelled_embeddings)
        scores = np.zeros(n)
        scores[order] = gains
    else:
        scores = _uncertainty(method, n, probs, prob_samples, seed)
    if task_weights and tasks is not None:
        scores = scores * np.array([task_weights.get(t, 1.0) for t in tasks])
    levels = priority_levels(scores, high_quantile, medium_quantile)
    ranked = np.argsort(-scores, kind="stable")
    if method == "diversity" and not task_weights:
        ranked = np.asarray(order)  # the k-center order itself is the greedy optimum
    chosen: list[Selection] = []
    kept_vecs: list[np.ndarray] = []
    ref = None if labelled_embeddings is None else np.asarray(labelled_embeddings, np.float32)
    near_labelled = None
    if duplicate_threshold is not None and embeddings is not None and ref is not None:
        near_labelled = nearest_similarity(np.asarray(embeddings, np.float32), ref)
    for idx in ranked:
        if len(chosen) == k:
            break
        if duplicate_threshold is not None and embeddings is not None:
            if near_labelled is not None and near_labelled[idx] >= duplicate_threshold:
                continue
            vec = np.asarray(embeddings[idx], np.float32)
            if kept_vecs and nearest_similarity(vec[None], np.stack(kept_vecs))[0] >= (
                duplicate_threshold
            ):
                continue
            kept_vecs.append(vec)
        task = None if tasks is None else tasks[idx]
        chosen.append(Selection(int(idx), float(scores[idx]), levels[idx], task))
    return chosen


def _pool_size(*arrays: np.ndarray | None) -> int:
    probs, samples, emb = arrays
    if probs is not None:
        return len(probs)
    if samples is not None:
        return np.asarray(samples).shape[1]
    if emb is not None:
        return len(emb)
    raise InvalidRequest("need probs, prob_samples or embeddings for the pool")


def _uncertainty(
    method: str, n: int, probs: np.ndarray | None, samples: np.ndarray | None, seed: int
) -> np.ndarray:
    if method == "random":
        return np.random.default_rng(seed).random(n)
    if method == "mc_dropout":
        if samples is None:
            raise InvalidRequest("method 'mc_dropout' needs prob_samples (T, n, classes)")
        return mc_dropout_scores(samples)
    if probs is None:
        raise InvalidRequest(f"method {method!r} needs probs (n, classes)")
    fn = {
        "entropy": entropy_scores,
        "margin": margin_scores,
        "least_confidence": least_confidence_scores,
    }[method]
    return fn(probs)
