"""Grades, pass/fail, recommendations, baseline comparison, leaderboard, runner."""

from __future__ import annotations

import json

import pytest

from qlp_ray.core.config import EvaluationConfig, load_config
from qlp_ray.core.errors import ConfigError
from qlp_ray.evaluate.leaderboard import Leaderboard
from qlp_ray.evaluate.report import build_report, compare, grade_for
from qlp_ray.evaluate.runner import evaluate_model, load_eval_set

CFG = EvaluationConfig()  # A >= .85, B >= .7, C >= .55, D >= .4; ppl A<=5 B<=10 C<=20 D<=50


def test_grade_from_quality_score():
    # score = (0.5 + 0.7 + 60/100) / 3 = 0.6 -> C (>= 0.55, < 0.7); C passes
    rep = build_report({"exact_match": 0.5, "token_f1": 0.7, "bleu": 60.0}, CFG)
    assert rep.score == pytest.approx(0.6)
    assert rep.grade == "C" and rep.passed
    # score 0.3 -> F, fails on grade
    rep = build_report({"exact_match": 0.3}, CFG)
    assert rep.grade == "F" and not rep.passed
    assert "below the passing grade C" in rep.failures[0]


def test_grade_from_perplexity_only_and_hard_limits():
    assert grade_for({"perplexity": 12.0}, CFG) == (None, "C")  # 10 < 12 <= 20
    assert grade_for({"perplexity": 4.0}, CFG) == (None, "A")
    rep = build_report({"exact_match": 0.9, "perplexity": 150.0, "p95_ms": 2500.0}, CFG)
    assert rep.grade == "A" and not rep.passed
    assert any("perplexity 150.00 > 100.0" in f for f in rep.failures)
    assert any("p95 latency" in f for f in rep.failures)
    with pytest.raises(ValueError, match="cannot grade"):
        grade_for({"p95_ms": 3.0}, CFG)


def test_compare_against_baseline():
    cmp = compare(
        {"perplexity": 8.0, "exact_match": 0.6, "bleu": 30.0, "n_examples": 50},
        {"perplexity": 10.0, "exact_match": 0.5, "bleu": 30.1, "n_examples": 20},
        tolerance=0.01,
    )
    # ppl 10 -> 8: -20 %, lower is better -> improved; EM +0.1 (+20 %) -> improved;
    # BLEU -0.1 (-0.33 %) is within 1 % -> neither; counts are not compared
    assert cmp.deltas["perplexity"].delta == pytest.approx(-2.0)
    assert cmp.deltas["perplexity"].relative == pytest.approx(-0.2)
    assert cmp.improved == ["exact_match", "perplexity"]
    assert cmp.deltas["bleu"].better is None
    assert "n_examples" not in cmp.deltas
    assert cmp.verdict == "better"
    worse = compare({"exact_match": 0.4}, {"exact_match": 0.5})
    assert worse.verdict == "worse" and worse.regressed == ["exact_match"]


def test_recommendations_follow_the_symptoms():
    rep = build_report(
        {
            "exact_match": 0.2,
            "train_loss": 0.5,
            "eval_loss": 1.2,  # gap 0.7 > 0.3 -> overfitting
            "n_train_examples": 50,  # < 200 -> more data
            "p95_ms": 3000.0,  # > 2000 -> optimize
            "precision_macro": 0.9,
            "recall_macro": 0.4,  # gap 0.5 > 0.2 -> rebalance
        },
        CFG,
        baseline={"exact_match": 0.5},
    )
    codes = [r.code for r in rep.recommendations]
    assert codes == ["regularize", "more_data", "rebalance", "optimize", "keep_baseline"]
    # underfitting: weak grade, no gap -> higher rank
    rep = build_report({"exact_match": 0.1, "train_loss": 2.0, "eval_loss": 2.1}, CFG)
    assert [r.code for r in rep.recommendations] == ["higher_rank"]
    # diverging loss -> lower LR (and no overfit/underfit claim from broken losses)
    rep = build_report({"exact_match": 0.1, "loss_history": [2.0, 2.5, 3.1]}, CFG)
    assert [r.code for r in rep.recommendations] == ["lower_lr"]
    # a good model gets no advice
    assert build_report({"exact_match": 0.95, "train_loss": 1.0, "eval_loss": 1.1}, CFG)
    assert not build_report({"exact_match": 0.95}, CFG).recommendations


def test_threshold_config_is_validated():
    with pytest.raises(ConfigError, match="grade_thresholds"):
        load_config(
            overrides={
                "evaluation": {"grade_thresholds": {"A": 0.5, "B": 0.7, "C": 0.3, "D": 0.1}}
            },
            environ={},
        )
    with pytest.raises(ValueError, match="keys A, B, C, D"):
        EvaluationConfig(perplexity_grades={"A": 1.0})


def test_leaderboard_persists_and_ranks(tmp_path):
    path = tmp_path / "lb.db"
    board = Leaderboard(path)
    board.record("api-v1", build_report({"exact_match": 0.5, "perplexity": 9.0}, CFG), domain="api")
    board.record("api-v2", build_report({"exact_match": 0.8, "perplexity": 7.0}, CFG), domain="api")
    board.record("api-v1", build_report({"exact_match": 0.6, "perplexity": 8.5}, CFG), domain="api")
    board.record("ml-v1", build_report({"exact_match": 0.9}, CFG), domain="ml")
    reopened = Leaderboard(path)  # a new process would see the same rows
    top = reopened.top(domain="api")
    assert [(e.adapter_id, e.score) for e in top] == [("api-v2", 0.8), ("api-v1", 0.6)]
    by_ppl = reopened.top(domain="api", metric="perplexity")
    assert [(e.adapter_id, e.metrics["perplexity"]) for e in by_ppl] == [
        ("api-v2", 7.0),
        ("api-v1", 8.5),
    ]
    assert [e.adapter_id for e in reopened.top()] == ["ml-v1", "api-v2", "api-v1"]
    assert len(reopened.entries()) == 4
    assert b"\x80\x04" not in path.read_bytes()  # no pickle protocol header in the store


def test_runner_on_tiny_model(tmp_path):
    from tests.helpers.tiny_lm import make_model, make_tokenizer

    data = tmp_path / "eval.jsonl"
    rows = [
        {"prompt": "deploy the service with", "reference": "docker"},
        {"prompt": "the api returns", "reference": "json"},
        {"prompt": "answer yes or no", "reference": "yes"},
    ]
    data.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    tok = make_tokenizer()
    model = make_model(tok)
    out = evaluate_model(model, tok, load_eval_set(data), max_new_tokens=4, label_task=True)
    assert out["n_examples"] == 3
    # untrained model over V tokens: perplexity in the order of the vocabulary size
    assert len(tok) / 3 < out["perplexity"] < len(tok) * 3
    assert 0 < out["generated_tokens"] <= 12
    assert 0 < out["p50_ms"] <= out["p95_ms"] <= out["p99_ms"]
    assert out["tokens_per_s"] > 0
    for key in ("exact_match", "token_f1", "rouge1", "f1_macro", "accuracy"):
        assert 0.0 <= out[key] <= 1.0
    report = build_report(out, CFG)
    assert report.grade in "ABCDF"


def test_load_eval_set_rejects_bad_lines(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "x"}\n')
    with pytest.raises(ValueError, match="bad.jsonl:1: needs string fields"):
        load_eval_set(bad)
    bad.write_text("{nope\n")
    with pytest.raises(ValueError, match="not valid JSON"):
        load_eval_set(bad)
