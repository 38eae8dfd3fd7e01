"""Nearest-neighbour head over (fine-tuned) sentence embeddings of the labelled rows.

Fine-tuning the embedder pulls each domain's titles together, so the closest labelled titles
are a sharper signal than a network fitted on top of the same vectors (repository-grouped CV
in ``benchmarks/router_variants.py``). The score of a domain is the sum of ``exp(sharpness *
cosine)`` over its members among the ``k`` nearest labelled rows, plus a small floor so an
absent domain is unlikely rather than impossible. ``k`` and ``sharpness`` are fixed a priori,
not tuned on evaluation folds. The head is the stored embeddings and labels (safetensors).
"""

from __future__ import annotations

import numpy as np
import torch

FLOOR = 1e-3


class KnnHead:
    """Cosine k-nearest-neighbour class scores over unit ``keys`` with integer ``labels``."""

    def __init__(
        self,
        keys: np.ndarray,
        labels: np.ndarray,
        n_classes: int,
        k: int = 10,
        sharpness: float = 8.0,
    ) -> None:
        if len(keys) != len(labels) or len(keys) == 0:
            raise ValueError(f"need as many labels as keys (>0), got {len(keys)}, {len(labels)}")
        self.keys = np.asarray(keys, dtype=np.float32)
        self.labels = np.asarray(labels, dtype=np.int64)
        self.n_classes, self.k, self.sharpness = n_classes, k, sharpness

    def log_probs(self, x: np.ndarray) -> np.ndarray:
        """``(n, n_classes)`` log-probabilities of unit embeddings ``x``."""
        sims = np.asarray(x, dtype=np.float64) @ self.keys.T.astype(np.float64)
        k = min(self.k, sims.shape[1])
        top = np.argpartition(-sims, k - 1, axis=1)[:, :k]
        w = np.exp(self.sharpness * np.take_along_axis(sims, top, axis=1))
        scores = np.full((len(sims), self.n_classes), FLOOR)
        for j in range(k):
            np.add.at(scores, (np.arange(len(sims)), self.labels[top[:, j]]), w[:, j])
        return np.log(scores / scores.sum(axis=1, keepdims=True))

    def state_tensors(self) -> dict[str, torch.Tensor]:
        return {
            "knn.keys": torch.from_numpy(self.keys).contiguous(),
            "knn.labels": torch.from_numpy(self.labels).contiguous(),
        }

    @classmethod
    def from_tensors(
        cls, tensors: dict[str, torch.Tensor], n_classes: int, k: int, sharpness: float
    ) -> KnnHead:
        return cls(
            tensors["knn.keys"].numpy(), tensors["knn.labels"].numpy(), n_classes, k, sharpness
        )
