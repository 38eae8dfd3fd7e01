"""Learned router: gating network training, calibration, threshold, safetensors round trip."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from qlp_ray.core.errors import ConfigError
from qlp_ray.route.learned import (
    GatingNetwork,
    GatingTrainConfig,
    LearnedRouter,
    choose_threshold,
    fit_learned_router,
    fit_temperature,
    softmax,
)

DIM = 384


def _clusters(n_per: int, noise: float, seed: int = 0, n_classes: int = 3):
    """Unit vectors around ``n_classes`` random directions; groups of 4 rows."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(n_classes, DIM))
    x, y = [], []
    for c in range(n_classes):
        pts = centres[c] + noise * rng.normal(size=(n_per, DIM))
        x.append(pts)
        y += [c] * n_per
    x = np.concatenate(x).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    names = ["api", "ml", "devops"][:n_classes]
    groups = [f"repo{i // 4}" for i in range(len(y))]
    return x, [names[c] for c in y], groups


def test_network_has_the_seed_shape():
    net = GatingNetwork(DIM, 5)
    shapes = [tuple(p.shape) for n, p in net.named_parameters() if n.endswith("weight")]
    assert shapes == [(256, DIM), (128, 256), (5, 128)]
    assert any(isinstance(m, torch.nn.Dropout) for m in net.modules())


def test_fit_temperature_recovers_known_temperature():
    rng = np.random.default_rng(1)
    true_logits = rng.normal(scale=2.0, size=(4000, 5))
    y = np.array([rng.choice(5, p=p) for p in softmax(true_logits)])
    # the model is over-confident by a factor of 3: the fitted temperature undoes it
    assert fit_temperature(true_logits * 3.0, y) == pytest.approx(3.0, rel=0.1)


def test_choose_threshold_hand_example():
    conf = np.array([0.9, 0.8, 0.7, 0.6, 0.5, 0.4])
    correct = np.array([1, 1, 1, 0, 1, 0], dtype=bool)
    # accuracy above: 1, 1, 1, .75, .8, .667 -> lowest threshold reaching 0.8 is 0.5
    assert choose_threshold(conf, correct, 0.8, min_support=1) == 0.5
    assert choose_threshold(conf, correct, 0.95, min_support=1) == 0.7
    assert choose_threshold(conf, correct, 0.6, min_support=1) == 0.0  # everything passes
    assert choose_threshold(conf, correct, 0.95, min_support=5) == 0.9  # none: top confidence


def test_learned_router_trains_calibrates_and_round_trips(tmp_path):
    x, domains, groups = _clusters(40, noise=0.9)
    router = fit_learned_router(
        x,
        domains,
        groups,
        cfg=GatingTrainConfig(epochs=40),
        target_accuracy=0.9,
        calib_folds=3,
        embedding_model="test",
    )
    xt, dt, _ = _clusters(30, noise=0.9, seed=0)
    decisions = router.route_batch(xt)
    acc = np.mean([d.domain == t for d, t in zip(decisions, dt, strict=True) if not d.fallback])
    assert acc >= 0.9
    assert router.meta.temperature > 0 and 0 <= router.threshold < 1
    # adapters table: a domain with no adapter goes to the fallback
    routed = router.route_batch(xt, targets={"api": "api-v3"})
    assert {d.target for d in routed} <= {"api-v3", None}
    assert all(d.fallback for d in routed if d.domain is None)

    out = router.save(tmp_path / "r")
    assert sorted(p.name for p in out.iterdir()) == ["gating.safetensors", "router.json"]
    meta = json.loads((out / "router.json").read_text())
    assert meta["labels"] == ["api", "devops", "ml"] and meta["dim"] == DIM
    loaded = LearnedRouter.load(out)
    np.testing.assert_allclose(loaded.probabilities(xt), router.probabilities(xt), atol=1e-6)


def test_load_errors_name_the_problem(tmp_path):
    with pytest.raises(ConfigError, match="qlp router train"):
        LearnedRouter.load(tmp_path)
    x, domains, groups = _clusters(8, noise=0.5)
    router = fit_learned_router(x, domains, groups, cfg=GatingTrainConfig(epochs=5), calib_folds=0)
    out = router.save(tmp_path / "r")
    meta = json.loads((out / "router.json").read_text())
    meta["labels"].append("frontend")  # weights no longer match the sidecar
    (out / "router.json").write_text(json.dumps(meta))
    with pytest.raises(ConfigError, match="does not match"):
        LearnedRouter.load(out)
    with pytest.raises(ValueError, match="expected"):
        router.probabilities(np.zeros((2, 10), dtype=np.float32))


def test_targets_by_domain_prefers_highest_version():
    from qlp_ray.route.learned import targets_by_domain

    rows = [("ml-a", "ml", 1), ("ml-b", "ml", 3), ("api", "api", 2), ("ml-c", "ml", 3)]
    assert targets_by_domain(rows) == {"ml": "ml-b", "api": "api"}


def test_knn_head_scores_by_hand():
    from qlp_ray.route.knn import FLOOR, KnnHead

    keys = np.array([[1, 0], [0.8, 0.6], [0, 1]], dtype=np.float32)
    head = KnnHead(keys, np.array([0, 0, 1]), n_classes=3, k=2, sharpness=2.0)
    lp = head.log_probs(np.array([[1.0, 0.0]]))
    # nearest two: cosine 1.0 and 0.8, both class 0; class 1 and 2 only get the floor
    raw = np.array([np.exp(2.0) + np.exp(1.6) + FLOOR, FLOOR, FLOOR])
    np.testing.assert_allclose(np.exp(lp[0]), raw / raw.sum(), rtol=1e-6)


def test_knn_router_trains_calibrates_and_round_trips(tmp_path):
    x, domains, groups = _clusters(40, noise=0.9)
    router = fit_learned_router(x, domains, groups, head="knn", calib_folds=3)
    assert router.net is None and router.knn is not None and router.meta.head == "knn"
    xt, dt, _ = _clusters(30, noise=0.9, seed=0)
    pred = [router.labels[i] for i in router.probabilities(xt).argmax(axis=1)]
    assert np.mean([p == t for p, t in zip(pred, dt, strict=True)]) >= 0.9
    out = router.save(tmp_path / "r")
    loaded = LearnedRouter.load(out)
    assert loaded.net is None and loaded.meta.head == "knn"
    np.testing.assert_allclose(loaded.probabilities(xt), router.probabilities(xt), atol=1e-6)
    with pytest.raises(ValueError, match="head"):
        fit_learned_router(x, domains, groups, head="svm", calib_folds=0)
