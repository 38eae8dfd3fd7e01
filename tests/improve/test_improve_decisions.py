"""Continual-learning decisions: retrain planning, candidate margin, experiment statistics."""

from __future__ import annotations

import math

import pytest

from qlp_ray.core.errors import InvalidRequest
from qlp_ray.improve.decisions import (
    VariantStats,
    idempotency_key,
    judge_candidate,
    judge_experiment,
    plan_training,
    relative_improvement,
    two_proportion_z,
)


def test_plan_training_orders_weakest_first():
    plans = plan_training({"api": 120, "ml": 300, "devops": 40, "frontend": 100}, 100,
                          weights={"api": 1.8, "frontend": 1.8})  # fmt: skip
    assert [p.domain for p in plans] == ["api", "frontend", "ml"]  # devops below the minimum
    assert plans[0].reason == "120 new high-quality samples >= 100"
    with pytest.raises(InvalidRequest):
        plan_training({}, 0)


@pytest.mark.parametrize(
    ("metric", "cand", "prod", "margin", "register", "imp"),
    [
        ("perplexity", 9.0, 10.0, 0.05, True, 0.10),  # lower is better: 10% better
        ("perplexity", 9.8, 10.0, 0.05, False, 0.02),
        ("rougeL", 0.42, 0.40, 0.05, True, 0.05),  # exactly the margin passes
        ("rougeL", 0.38, 0.40, 0.05, False, -0.05),
    ],
)
def test_candidate_margin(metric, cand, prod, margin, register, imp):
    v = judge_candidate(metric, {metric: cand}, {metric: prod}, margin)
    assert v.register is register and v.improvement == pytest.approx(imp)
    assert f"{margin:.0%} margin" in v.reason


def test_candidate_edge_cases():
    assert judge_candidate("f1", {"f1": 0.3}, None, 0.05).register  # first adapter of a domain
    assert not judge_candidate("perplexity", {"perplexity": math.nan}, None, 0.05).register
    with pytest.raises(InvalidRequest, match="lack 'f1'"):
        judge_candidate("f1", {"bleu": 1.0}, None, 0.05)
    assert relative_improvement("loss", 1.0, 0.0) < 0  # no division by zero


def test_two_proportion_z_matches_hand_computation():
    c, t = VariantStats(200, 100), VariantStats(200, 130)
    z, p = two_proportion_z(c, t)
    pooled = 230 / 400
    se = math.sqrt(pooled * (1 - pooled) * (2 / 200))
    assert z == pytest.approx(0.15 / se)
    assert p == pytest.approx(0.5 * math.erfc(z / math.sqrt(2)))
    assert two_proportion_z(VariantStats(50, 50), VariantStats(50, 50)) == (0.0, 0.5)


def test_experiment_outcomes():
    assert judge_experiment(VariantStats(10, 5), VariantStats(10, 9)).outcome == "continue"
    win = judge_experiment(VariantStats(200, 100), VariantStats(200, 130))
    assert win.outcome == "promote" and win.p_value < 0.05 and win.numbers["z"] > 2.9
    lose = judge_experiment(VariantStats(200, 130), VariantStats(200, 100))
    assert lose.outcome == "rollback" and "<" in lose.reason
    tie = judge_experiment(VariantStats(100, 50), VariantStats(100, 52))
    assert tie.outcome == "continue"
    budget = judge_experiment(VariantStats(100, 50), VariantStats(100, 52), max_trials=100)
    assert budget.outcome == "rollback" and "no significant gain" in budget.reason
    with pytest.raises(InvalidRequest, match="successes"):
        VariantStats(3, 4)


def test_idempotency_keys_are_stable_and_distinct():
    k = idempotency_key("train", "api", "sha-1", 3)
    assert k == idempotency_key("train", "api", "sha-1", 3) and k.startswith("train:api:")
    assert k != idempotency_key("train", "api", "sha-2", 3)
    assert k != idempotency_key("promote", "api", "sha-1", 3)
