"""Centroid routing: cosine similarity of a request embedding to each adapter's domain centroid.

Pure numpy, no Ray. The confidence of a decision is the cosine similarity to the best
centroid; below the threshold the request goes to the fallback target (``target=None``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np


def compute_centroid(embeddings: np.ndarray) -> np.ndarray:
    """Unit-length mean of unit vectors (the direction a domain's prompts share)."""
    if embeddings.ndim != 2 or len(embeddings) == 0:
        raise ValueError(f"need a non-empty (n, dim) array, got shape {embeddings.shape}")
    mean = embeddings.astype(np.float32).mean(axis=0)
    norm = float(np.linalg.norm(mean))
    if norm == 0.0:
        raise ValueError("embeddings cancel out: centroid is the zero vector")
    return mean / norm


@dataclass(frozen=True)
class RouteEntry:
    """One routable target: an adapter id, its domain and its centroid."""

    adapter_id: str
    domain: str
    centroid: np.ndarray


@dataclass
class RouteDecision:
    """Where one request goes. ``target is None`` means the fallback (base model)."""

    target: str | None
    domain: str | None
    confidence: float
    fallback: bool
    scores: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {
            "target": self.target,
            "domain": self.domain,
            "confidence": round(self.confidence, 4),
            "fallback": self.fallback,
            "scores": {k: round(v, 4) for k, v in self.scores.items()},
        }


class CentroidRouter:
    """Routes unit embeddings to the adapter whose centroid is nearest by cosine."""

    def __init__(self, entries: list[RouteEntry], threshold: float) -> None:
        self.threshold = float(threshold)
        self.entries = list(entries)
        if self.entries:
            self._matrix = np.stack([e.centroid.astype(np.float32) for e in self.entries])
        else:
            self._matrix = np.zeros((0, 0), dtype=np.float32)

    @classmethod
    def from_centroids(
        cls, centroids: Mapping[str, tuple[str, np.ndarray]], threshold: float
    ) -> CentroidRouter:
        """Build from ``{adapter_id: (domain, centroid)}``."""
        return cls([RouteEntry(a, d, np.asarray(c)) for a, (d, c) in centroids.items()], threshold)

    @property
    def matrix(self) -> np.ndarray:
        """``(n_entries, dim)`` unit centroids, the rows the similarities are taken against."""
        return self._matrix

    def route_batch(self, embeddings: np.ndarray) -> list[RouteDecision]:
        """Route an ``(n, dim)`` batch of unit vectors."""
        if not self.entries:
            return [RouteDecision(None, None, 0.0, True) for _ in range(len(embeddings))]
        return self.decide(np.asarray(embeddings, dtype=np.float32) @ self._matrix.T)

    def decide(self, sims: np.ndarray) -> list[RouteDecision]:
        """Decisions from ``(n, n_entries)`` cosine similarities (computed here by
        :meth:`route_batch`, or elsewhere: a device actor's vector search)."""
        if not self.entries:
            return [RouteDecision(None, None, 0.0, True) for _ in range(len(sims))]
        decisions = []
        for row in sims:
            best = int(np.argmax(row))
            conf = float(row[best])
            entry = self.entries[best]
            scores = {e.adapter_id: float(s) for e, s in zip(self.entries, row, strict=True)}
            if conf < self.threshold:
                decisions.append(RouteDecision(None, None, conf, True, scores))
            else:
                decisions.append(RouteDecision(entry.adapter_id, entry.domain, conf, False, scores))
        return decisions

    def route(self, embedding: np.ndarray) -> RouteDecision:
        """Route one unit vector."""
        return self.route_batch(np.asarray(embedding, dtype=np.float32)[None, :])[0]
