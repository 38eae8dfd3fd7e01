"""A/B experiments: statistics checked against hand-computed numbers, assignment, bandit."""

from __future__ import annotations

import math
import random
from datetime import UTC, datetime, timedelta

import pytest
from pydantic import ValidationError

from qlp_ray.core.errors import InvalidRequest, NotFound
from qlp_ray.experiments.ab import (
    Experiment,
    ExperimentBook,
    ExperimentSpec,
    chi_square_success,
    diff_interval,
    min_sample_size,
    wilson_interval,
)


def _spec(**kw) -> ExperimentSpec:
    base = {
        "id": "exp1",
        "variants": [{"name": "a", "target": "dataeng-v1"}, {"name": "b", "target": "dataeng-v2"}],
    }
    base.update(kw)
    return ExperimentSpec.model_validate(base)


def test_chi_square_matches_hand_computation():
    # table: a = 30 successes / 70 failures, b = 45 / 55. Totals 75 / 125, 200.
    # expected: a,b success 37.5, failure 62.5.
    # chi2 = 2 * (7.5^2/37.5 + 7.5^2/62.5) = 2 * (1.5 + 0.9) = 4.8
    chi2, p, dof = chi_square_success([30, 45], [70, 55])
    assert chi2 == pytest.approx(4.8, rel=1e-12)
    assert dof == 1
    # p of chi2(1) > 4.8 = erfc(sqrt(4.8 / 2))
    assert p == pytest.approx(math.erfc(math.sqrt(2.4)), rel=1e-9)
    assert p == pytest.approx(0.02846, abs=1e-5)


def test_chi_square_degenerate_table_is_not_significant():
    assert chi_square_success([0, 0], [10, 12]) == (0.0, 1.0, 1)


def test_wilson_interval_hand_numbers():
    # 30/100 at 95%: z = 1.959964; centre = (0.3 + z^2/200) / (1 + z^2/100)
    z = 1.959963984540054
    centre = (0.3 + z * z / 200) / (1 + z * z / 100)
    half = z * math.sqrt(0.3 * 0.7 / 100 + z * z / 40000) / (1 + z * z / 100)
    lo, hi = wilson_interval(30, 100, 0.95)
    assert (lo, hi) == pytest.approx((centre - half, centre + half), rel=1e-9)
    assert lo == pytest.approx(0.2189, abs=1e-4) and hi == pytest.approx(0.3958, abs=1e-4)
    assert wilson_interval(0, 0, 0.95) == (0.0, 1.0)


def test_diff_interval_and_min_sample_size():
    lo, hi = diff_interval(30, 100, 45, 100, 0.95)
    se = math.sqrt(0.3 * 0.7 / 100 + 0.45 * 0.55 / 100)
    assert (lo, hi) == pytest.approx((0.15 - 1.959964 * se, 0.15 + 1.959964 * se), rel=1e-5)
    # classic textbook value: 0.10 -> 0.15 at alpha 0.05, power 0.8 needs 686 per arm
    assert min_sample_size(0.10, 0.05, 0.95, 0.8) == 686
    # bigger effect, smaller sample
    assert min_sample_size(0.10, 0.20, 0.95, 0.8) < 100


def test_spec_validation_errors_name_the_problem():
    with pytest.raises(ValidationError, match="unique"):
        _spec(variants=[{"name": "a", "target": "x"}, {"name": "a", "target": "y"}])
    with pytest.raises(ValidationError, match="at least 2"):
        _spec(variants=[{"name": "a", "target": "x"}])
    t = datetime(2026, 1, 1, tzinfo=UTC)
    with pytest.raises(ValidationError, match="after start"):
        _spec(start=t, end=t - timedelta(days=1))


def test_sticky_assignment_is_stable_and_proportional():
    exp = Experiment(
        _spec(
            variants=[
                {"name": "a", "target": "x", "weight": 3},
                {"name": "b", "target": "y", "weight": 1},
            ]
        )
    )
    first = {f"user{i}": exp.assign(f"user{i}").variant for i in range(4000)}
    again = {f"user{i}": exp.assign(f"user{i}").variant for i in range(4000)}
    assert first == again
    # a fresh Experiment object (another replica) gives the same answers
    other = Experiment(exp.spec)
    assert all(other.assign(u).variant == v for u, v in list(first.items())[:500])
    share_a = sum(v == "a" for v in first.values()) / len(first)
    assert share_a == pytest.approx(0.75, abs=0.03)
    assert exp.stats["a"].impressions + exp.stats["b"].impressions == 8000


@pytest.mark.parametrize(("strategy", "expected_a"), [("weighted", 0.2), ("random", 0.5)])
def test_weighted_and_random_proportions(strategy, expected_a):
    exp = Experiment(
        _spec(
            strategy=strategy,
            variants=[
                {"name": "a", "target": "x", "weight": 1},
                {"name": "b", "target": "y", "weight": 4},
            ],
        ),
        rng=random.Random(7),
    )
    n = 20000
    share_a = sum(exp.assign("same-user").variant == "a" for _ in range(n)) / n
    assert share_a == pytest.approx(expected_a, abs=0.015)


def test_targeting_and_time_window():
    now = datetime(2026, 6, 1, tzinfo=UTC)
    book = ExperimentBook(seed=1)
    book.add(
        _spec(
            id="ml-only",
            domains=["ml"],
            metadata={"tier": "pro"},
            start=now - timedelta(hours=1),
            end=now + timedelta(hours=1),
        )
    )
    assert book.assign("u", "ml", {"tier": "pro"}, now=now).experiment_id == "ml-only"
    assert book.assign("u", "api", {"tier": "pro"}, now=now) is None
    assert book.assign("u", "ml", {"tier": "free"}, now=now) is None
    assert book.assign("u", "ml", {"tier": "pro"}, now=now + timedelta(hours=2)) is None
    with pytest.raises(InvalidRequest):
        book.add(_spec(id="ml-only"))
    with pytest.raises(NotFound):
        book.get("nope")


def test_analysis_declares_winner_only_with_significance_and_samples():
    exp = Experiment(_spec(min_detectable_effect=0.15))
    for _ in range(30):
        exp.record_outcome("a", True, 0.1)
    for _ in range(70):
        exp.record_outcome("a", False, 0.1)
    for _ in range(45):
        exp.record_outcome("b", True, 0.2, feedback=4)
    for _ in range(55):
        exp.record_outcome("b", False, 0.2)
    report = exp.analyze()
    assert report["chi2"] == pytest.approx(4.8)
    assert report["significant"] is True
    need = min_sample_size(0.3, 0.15, 0.95, 0.8)
    assert report["min_sample_size_per_variant"] == need
    assert (need <= 100) is report["enough_data"]
    assert report["winner"] == ("b" if need <= 100 else None)
    b = report["variants"][1]
    assert b["success_rate"] == pytest.approx(0.45) and b["lift_vs_control"] == pytest.approx(0.15)
    assert b["mean_feedback"] == pytest.approx(4.0) and b["mean_latency_s"] == pytest.approx(0.2)
    assert b["prob_best"] > 0.95
    # a small effect requires more data than we have: no winner although p < 0.05
    small = Experiment(_spec(min_detectable_effect=0.02))
    for name, s, f in (("a", 30, 70), ("b", 45, 55)):
        for i in range(s + f):
            small.record_outcome(name, i < s)
    assert small.analyze()["winner"] is None
    with pytest.raises(NotFound):
        exp.record_outcome("zzz", True)


def test_thompson_bandit_shifts_traffic_to_better_arm():
    rng = random.Random(3)
    exp = Experiment(
        _spec(
            bandit=True,
            variants=[
                {"name": "worse", "target": "x"},
                {"name": "better", "target": "y"},
            ],
        ),
        rng=random.Random(11),
    )
    truth = {"worse": 0.3, "better": 0.6}
    late = []
    for i in range(2000):
        a = exp.assign(f"u{i}")
        exp.record_outcome(a.variant, rng.random() < truth[a.variant])
        if i >= 1500:
            late.append(a.variant)
    assert late.count("better") / len(late) > 0.85
    assert exp.analyze()["variants"][1]["prob_best"] > 0.99


def test_shipped_experiment_file_loads_and_bad_file_is_named(tmp_path):
    from qlp_ray.core.config import REPO_ROOT
    from qlp_ray.core.errors import ConfigError
    from qlp_ray.experiments.ab import load_experiment_file

    specs = load_experiment_file(REPO_ROOT / "configs" / "experiments" / "example.yaml")
    assert [s.id for s in specs] == ["dataeng-v2-vs-v1", "ml-stack-bandit"]
    assert specs[1].bandit and specs[1].variants[1].target == "ml:0.7+dataeng:0.3"
    bad = tmp_path / "bad.yaml"
    bad.write_text("definitions:\n  - id: x\n    variants: [{name: a, target: t}]\n")
    with pytest.raises(ConfigError, match=r"definitions\[0\]"):
        load_experiment_file(bad)
