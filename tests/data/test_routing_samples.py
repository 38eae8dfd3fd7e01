"""Routing quality on the bundled samples: centroids of each domain's train prompts route the
held-out prompts, and the default threshold separates in-domain from unrelated requests.

Uses the real offline MiniLM embedder (no Ray). Measured when the threshold was calibrated:
held-out accuracy 0.992 (238/240), held-out confidence p1 0.23 / median 0.46, unrelated
prompts at most 0.135.
"""

from __future__ import annotations

import numpy as np
import pytest

from qlp_ray.core.config import DOMAINS, RouterConfig
from qlp_ray.data.capsules import load_capsules, sample_path
from qlp_ray.data.format import routing_text
from qlp_ray.route.centroid import CentroidRouter, compute_centroid
from qlp_ray.route.embeddings import get_embedder

TRAIN_STRIDE = 2
UNRELATED = [
    "What is the capital of France?",
    "Write a haiku about autumn leaves",
    "Tell me a joke about cats",
    "Who wrote Pride and Prejudice?",
    "What's a good recipe for banana bread?",
    "Summarise the plot of Hamlet",
]


@pytest.fixture(scope="module")
def embedder():
    return get_embedder()


@pytest.fixture(scope="module")
def router(embedder) -> CentroidRouter:
    centroids = {}
    for domain in DOMAINS:
        # every 2nd train prompt: cosine >= 0.98 to the full-train centroid, half the encoding cost
        train = load_capsules(sample_path(domain, "train"))[::TRAIN_STRIDE]
        texts = [routing_text(c) for c in train]
        centroids[f"{domain}-v1"] = (domain, compute_centroid(embedder.encode(texts)))
    return CentroidRouter.from_centroids(centroids, threshold=RouterConfig().threshold)


@pytest.fixture(scope="module")
def heldout_decisions(embedder, router):
    labels, texts = [], []
    for domain in DOMAINS:
        for cap in load_capsules(sample_path(domain, "heldout")):
            labels.append(domain)
            texts.append(routing_text(cap))
    return labels, router.route_batch(embedder.encode(texts))


def test_heldout_routing_accuracy(heldout_decisions) -> None:
    labels, decisions = heldout_decisions
    # accuracy of the nearest centroid, whether or not it clears the threshold
    best = [max(d.scores, key=d.scores.get).split("-")[0] for d in decisions]
    accuracy = float(np.mean([b == y for b, y in zip(best, labels, strict=True)]))
    assert accuracy >= 0.97, f"held-out routing accuracy {accuracy:.3f}"
    routed_ok = np.mean([d.domain == y for d, y in zip(decisions, labels, strict=True)])
    assert routed_ok >= 0.95, f"routed-and-correct fraction {routed_ok:.3f}"


def test_per_domain_accuracy(heldout_decisions) -> None:
    labels, decisions = heldout_decisions
    for domain in DOMAINS:
        rows = [d for d, y in zip(decisions, labels, strict=True) if y == domain]
        acc = np.mean([d.domain == domain for d in rows])
        assert acc >= 0.9, f"{domain}: {acc:.3f}"


def test_in_domain_confidence_clears_threshold(heldout_decisions, router) -> None:
    _, decisions = heldout_decisions
    confidences = np.array([d.confidence for d in decisions])
    assert np.mean(confidences >= router.threshold) >= 0.97
    assert np.median(confidences) >= router.threshold + 0.15


def test_unrelated_prompts_fall_back(embedder, router) -> None:
    decisions = router.route_batch(embedder.encode(UNRELATED))
    for text, decision in zip(UNRELATED, decisions, strict=True):
        assert decision.fallback and decision.target is None, (text, decision.to_dict())
        assert decision.confidence < router.threshold - 0.03, (text, decision.confidence)
