"""Top-k routing decisions (stacks of close domains) and the router's target table, no Ray."""

from __future__ import annotations

import numpy as np
import pytest

from qlp_ray.models.composition import parse_stack
from qlp_ray.route.centroid import RouteEntry
from qlp_ray.route.stacking import RouteTarget, StackPolicy, decide, stack_weights
from qlp_ray.serve.router import RouteTable, stack_targets

TARGETS = {
    "sql": RouteTarget("sql", "dataeng", 2),
    "css": RouteTarget("css", "frontend", 1),
    "k8s": RouteTarget("k8s", "devops", 3),
    "sql-old": RouteTarget("sql-old", "dataeng", 1),
}
TOP2 = StackPolicy(top_k=2, min_share=0.8)


def test_top1_is_the_plain_nearest_target():
    d = decide({"sql": 0.50, "css": 0.49}, TARGETS, 0.2, StackPolicy())
    assert d == {"target": "sql", "version": 2, "domain": "dataeng", "confidence": 0.5,
                 "fallback": False, "stack": None}  # fmt: skip


def test_close_runner_up_makes_a_weighted_stack():
    d = decide({"sql": 0.60, "css": 0.40 * 1.2, "k8s": 0.1}, TARGETS, 0.2, TOP2)
    # 0.60 / 0.48: the runner-up holds 0.8 of the best -> stack, weights 0.556/0.444 -> 0.6/0.4
    assert d["target"] == "sql@2:0.6+css@1:0.4" and d["version"] is None
    assert d["domain"] == "dataeng" and d["confidence"] == 0.6 and not d["fallback"]
    assert [(m["adapter"], m["version"], m["weight"]) for m in d["stack"]] == [
        ("sql", 2, 0.6), ("css", 1, 0.4)
    ]  # fmt: skip
    stack = parse_stack(d["target"])  # the compositor's own parser accepts it, canonical
    assert stack.key == d["target"] and stack.resolved


def test_far_runner_up_stays_single_and_low_best_falls_back():
    assert decide({"sql": 0.6, "css": 0.47}, TARGETS, 0.2, TOP2)["target"] == "sql"
    d = decide({"sql": 0.15, "css": 0.14}, TARGETS, 0.2, TOP2)
    assert d["target"] is None and d["fallback"] and d["confidence"] == 0.15


def test_same_domain_runner_up_is_skipped_and_top_k_caps_members():
    scores = {"sql": 0.5, "sql-old": 0.49, "css": 0.48, "k8s": 0.47}
    d = decide(scores, TARGETS, 0.2, TOP2)
    assert [m["adapter"] for m in d["stack"]] == ["sql", "css"]  # not sql-old (same domain)
    d = decide(scores, TARGETS, 0.2, StackPolicy(top_k=3, min_share=0.8))
    assert [m["adapter"] for m in d["stack"]] == ["sql", "css", "k8s"]
    assert sum(m["weight"] for m in d["stack"]) == pytest.approx(1.0)


def test_best_domain_without_an_adapter_falls_back():
    d = decide({"ml": 0.9, "sql": 0.85}, TARGETS, 0.2, TOP2)
    assert d["target"] is None and d["fallback"]


def test_learned_mode_stack_confidence_is_the_members_probability_mass():
    by_domain = {"dataeng": TARGETS["sql"], "frontend": TARGETS["css"]}
    probs = {"dataeng": 0.45, "frontend": 0.40, "devops": 0.15}
    additive = StackPolicy(top_k=2, min_share=0.8, additive=True)
    d = decide(probs, by_domain, 0.6, additive)
    assert d["target"] == "sql@2:0.5+css@1:0.5" and d["confidence"] == 0.85
    # top_k=1: 0.45 alone is under the 0.6 threshold
    assert decide(probs, by_domain, 0.6, StackPolicy(additive=True))["fallback"]


@pytest.mark.parametrize(
    ("scores", "decimals", "weights"),
    [
        ([0.5, 0.5], 1, [0.5, 0.5]),
        ([0.6, 0.48], 1, [0.6, 0.4]),
        ([0.6, 0.48], 2, [0.56, 0.44]),
        ([0.3, 0.29, 0.28], 1, [0.4, 0.3, 0.3]),
        ([0.9, 0.01], 1, [0.9, 0.1]),  # a member never gets weight 0
    ],
)
def test_stack_weights(scores, decimals, weights):
    assert stack_weights(scores, decimals) == pytest.approx(weights)
    assert sum(stack_weights(scores, decimals)) == pytest.approx(1.0)


def test_bad_policies_and_scores_are_refused():
    with pytest.raises(ValueError, match="top_k"):
        StackPolicy(top_k=0)
    with pytest.raises(ValueError, match="min_share"):
        StackPolicy(min_share=1.5)
    with pytest.raises(ValueError, match="positive"):
        stack_weights([0.5, -0.1], 1)


def test_router_stack_targets_by_adapter_and_by_domain():
    vec = np.ones(4, dtype=np.float32) / 2
    table = RouteTable(
        [RouteEntry("sql", "dataeng", vec), RouteEntry("css", "frontend", vec)],
        {"sql": 2, "css": 1},
    )
    assert stack_targets(table, {}, by_domain=False) == {
        "sql": RouteTarget("sql", "dataeng", 2), "css": RouteTarget("css", "frontend", 1)
    }  # fmt: skip
    assert stack_targets(table, {"dataeng": "sql"}, by_domain=True) == {
        "dataeng": RouteTarget("sql", "dataeng", 2)
    }
