"""Lexical routing signal: hashed character n-gram TF-IDF with a linear softmax layer.

Sentence embeddings blur the tool names that decide a domain ("helm", "dbt", "vite",
"pyspark"); character n-grams keep them, and they generalise to unseen spellings and
compounds ("kubectl", "sparkSession"). Features are hashed (CRC32 into ``n_buckets``), so the
model is two tensors (IDF and weights) saved with safetensors — no vocabulary, no pickle.
The classifier is an ``nn.EmbeddingBag`` over the hashed n-grams (a sparse linear layer)
trained with L2-regularised weighted cross-entropy. No Ray import.
"""

from __future__ import annotations

import math
import zlib
from collections import Counter
from collections.abc import Sequence

import numpy as np
import torch
from torch import nn


def char_ngrams(text: str, n_min: int = 3, n_max: int = 5) -> list[str]:
    """Character n-grams of each lower-cased word padded with spaces (like ``char_wb``)."""
    grams = []
    for word in text.lower().split():
        w = f" {word} "
        for n in range(n_min, n_max + 1):
            if len(w) < n:
                break
            grams += [w[i : i + n] for i in range(len(w) - n + 1)]
    return grams


class HashedNgramFeatures:
    """Sublinear-TF x IDF weights of hashed n-grams, L2-normalised per text."""

    def __init__(self, n_buckets: int = 1 << 18, n_min: int = 3, n_max: int = 5) -> None:
        self.n_buckets, self.n_min, self.n_max = n_buckets, n_min, n_max
        self.idf = torch.ones(n_buckets)

    def _counts(self, text: str) -> Counter:
        return Counter(
            zlib.crc32(g.encode()) % self.n_buckets
            for g in char_ngrams(text, self.n_min, self.n_max)
        )

    def fit_idf(self, texts: Sequence[str]) -> HashedNgramFeatures:
        present = [b for t in texts for b in self._counts(t)]  # each bucket once per text
        df = torch.from_numpy(np.bincount(present, minlength=self.n_buckets).astype(np.float32))
        self.idf = torch.log((1 + len(texts)) / (1 + df)) + 1
        return self

    def transform(self, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(indices, offsets, weights)`` for ``nn.EmbeddingBag`` (one bag per text)."""
        idx: list[int] = []
        wts: list[float] = []
        offsets = []
        for t in texts:
            offsets.append(len(idx))
            counts = self._counts(t)
            if not counts:
                continue
            buckets = list(counts)
            idf = self.idf[buckets].tolist()
            w = [(1 + math.log(counts[b])) * f for b, f in zip(buckets, idf, strict=True)]
            norm = math.sqrt(sum(v * v for v in w)) or 1.0
            idx += buckets
            wts += [v / norm for v in w]
        return (
            torch.tensor(idx, dtype=torch.long),
            torch.tensor(offsets, dtype=torch.long),
            torch.tensor(wts, dtype=torch.float32),
        )


class LexicalClassifier(nn.Module):
    """Linear softmax classifier over hashed n-gram TF-IDF features."""

    def __init__(self, n_classes: int, n_buckets: int = 1 << 18) -> None:
        super().__init__()
        self.features = HashedNgramFeatures(n_buckets)
        self.bag = nn.EmbeddingBag(n_buckets, n_classes, mode="sum")
        nn.init.zeros_(self.bag.weight)
        self.bias = nn.Parameter(torch.zeros(n_classes))

    def logits(self, texts: Sequence[str]) -> np.ndarray:
        idx, off, w = self.features.transform(texts)
        with torch.no_grad():
            return (self.bag(idx, off, per_sample_weights=w) + self.bias).numpy().astype(np.float64)

    def state_tensors(self) -> dict[str, torch.Tensor]:
        return {
            "lexical.idf": self.features.idf.contiguous(),
            "lexical.weight": self.bag.weight.detach().contiguous(),
            "lexical.bias": self.bias.detach().contiguous(),
        }

    def load_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        self.features.idf = tensors["lexical.idf"]
        with torch.no_grad():
            self.bag.weight.copy_(tensors["lexical.weight"])
            self.bias.copy_(tensors["lexical.bias"])


def train_lexical(
    texts: Sequence[str],
    y: np.ndarray,
    n_classes: int,
    sample_weight: np.ndarray | None = None,
    l2: float = 0.1,
    steps: int = 60,
    n_buckets: int = 1 << 18,
) -> LexicalClassifier:
    """Fit a :class:`LexicalClassifier` with L-BFGS on ``sum(w * CE) + l2 / 2 * ||W||^2``.

    Each class's total sample weight is equalised, as in the gating network.
    """
    model = LexicalClassifier(n_classes, n_buckets)
    model.features.fit_idf(texts)
    w = np.ones(len(y)) if sample_weight is None else np.asarray(sample_weight, dtype=float)
    per_class = np.bincount(y, weights=w, minlength=n_classes)
    w = w / per_class[y] * (len(y) / n_classes)
    wt = torch.as_tensor(w, dtype=torch.float32)
    yt = torch.as_tensor(y, dtype=torch.long)
    idx, off, fw = model.features.transform(texts)
    params = [model.bag.weight, model.bias]
    opt = torch.optim.LBFGS(params, lr=1.0, max_iter=steps, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        logits = model.bag(idx, off, per_sample_weights=fw) + model.bias
        loss = (nn.functional.cross_entropy(logits, yt, reduction="none") * wt).sum()
        loss = loss + 0.5 * l2 * model.bag.weight.pow(2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return model
