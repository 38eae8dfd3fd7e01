"""Turn raw metrics into a verdict: quality score, grade A–F, pass/fail,
recommendations, and a comparison against a baseline.

Metric names are the flat keys produced by :mod:`qlp_ray.evaluate.runner`
(``perplexity``, ``exact_match``, ``token_f1``, ``bleu`` (0–100), ``rouge1``,
``rouge2``, ``rougeL``, ``f1_macro``, ``p95_ms``, ...). Optional training
facts (``train_loss``, ``eval_loss``, ``n_train_examples``, ``loss_history``)
sharpen the recommendations.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

from qlp_ray.core.config import GRADES, EvaluationConfig

#: Metrics where a smaller value is better; every other numeric metric is "higher is better".
LOWER_IS_BETTER = frozenset(
    {
        "perplexity",
        "mean_nll",
        "eval_loss",
        "train_loss",
        "p50_ms",
        "p95_ms",
        "p99_ms",
        "python_peak_bytes",
        "process_max_rss_bytes",
        "size_bytes",
    }
)
#: Counts that describe the run rather than its quality; never compared.
NOT_COMPARED = frozenset({"n_tokens", "n_examples", "n_train_examples", "generated_tokens"})
SCORE_SCALE = {"bleu": 100.0}  # BLEU is reported 0-100, everything else in the score is 0-1


@dataclass(frozen=True)
class Recommendation:
    code: str
    message: str


@dataclass(frozen=True)
class MetricDelta:
    candidate: float
    baseline: float
    delta: float
    relative: float
    better: bool | None  # None: within tolerance


@dataclass(frozen=True)
class Comparison:
    deltas: dict[str, MetricDelta]
    improved: list[str]
    regressed: list[str]
    verdict: str  # "better" | "worse" | "mixed" | "same"


@dataclass
class EvaluationReport:
    metrics: dict[str, float]
    score: float | None
    grade: str
    passed: bool
    failures: list[str] = field(default_factory=list)
    recommendations: list[Recommendation] = field(default_factory=list)
    comparison: Comparison | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def quality_score(metrics: dict[str, float], cfg: EvaluationConfig) -> float | None:
    """Mean of the configured task metrics present in ``metrics``, each on 0–1."""
    parts = [metrics[m] / SCORE_SCALE.get(m, 1.0) for m in cfg.score_metrics if m in metrics]
    return sum(parts) / len(parts) if parts else None


def grade_for(metrics: dict[str, float], cfg: EvaluationConfig) -> tuple[float | None, str]:
    """(score, grade): from the quality score, or from perplexity if no task metric exists."""
    score = quality_score(metrics, cfg)
    if score is not None:
        for g in GRADES:
            if score >= cfg.grade_thresholds[g]:
                return score, g
        return score, "F"
    ppl = metrics.get("perplexity")
    if ppl is None:
        raise ValueError(
            "cannot grade: no perplexity and none of the score metrics "
            f"{cfg.score_metrics} were measured"
        )
    for g in GRADES:
        if ppl <= cfg.perplexity_grades[g]:
            return None, g
    return None, "F"


def compare(
    candidate: dict[str, float], baseline: dict[str, float], *, tolerance: float = 0.01
) -> Comparison:
    """Per-metric deltas of ``candidate`` against ``baseline`` on their shared numeric metrics.

    A change whose size relative to the baseline is at most ``tolerance`` is
    neither better nor worse.
    """
    deltas: dict[str, MetricDelta] = {}
    for name in sorted((set(candidate) & set(baseline)) - NOT_COMPARED):
        c, b = candidate[name], baseline[name]
        if not all(isinstance(v, int | float) and not isinstance(v, bool) for v in (c, b)):
            continue
        delta = c - b
        relative = delta / abs(b) if b else (0.0 if delta == 0 else math.copysign(math.inf, delta))
        if abs(relative) <= tolerance:
            better = None
        else:
            better = (delta < 0) if name in LOWER_IS_BETTER else (delta > 0)
        deltas[name] = MetricDelta(float(c), float(b), float(delta), float(relative), better)
    improved = [n for n, d in deltas.items() if d.better is True]
    regressed = [n for n, d in deltas.items() if d.better is False]
    if improved and regressed:
        verdict = "mixed"
    elif improved:
        verdict = "better"
    elif regressed:
        verdict = "worse"
    else:
        verdict = "same"
    return Comparison(deltas, improved, regressed, verdict)


def recommend(
    metrics: dict[str, Any],
    cfg: EvaluationConfig,
    grade: str,
    comparison: Comparison | None = None,
) -> list[Recommendation]:
    """Rules that turn symptoms in the metrics into next steps."""
    recs: list[Recommendation] = []
    train_loss, eval_loss = metrics.get("train_loss"), metrics.get("eval_loss")
    history = metrics.get("loss_history") or []
    finite_history = [x for x in history if math.isfinite(x)]
    diverged = (train_loss is not None and not math.isfinite(train_loss)) or (
        len(history) >= 2
        and (len(finite_history) < len(history) or finite_history[-1] > finite_history[0])
    )
    if diverged:
        recs.append(
            Recommendation(
                "lower_lr", "Training loss rose or became non-finite: lower the learning rate."
            )
        )
    weak = grade in ("D", "F")
    if train_loss is not None and eval_loss is not None and not diverged:
        gap = eval_loss - train_loss
        if gap > cfg.overfit_gap:
            recs.append(
                Recommendation(
                    "regularize",
                    f"Eval loss exceeds train loss by {gap:.2f} (> {cfg.overfit_gap}): "
                    "overfitting; raise LoRA dropout, train fewer steps, or add data.",
                )
            )
        elif weak:
            recs.append(
                Recommendation(
                    "higher_rank",
                    "Low quality without overfitting (underfitting): raise the LoRA rank "
                    "or train more steps.",
                )
            )
    n_train = metrics.get("n_train_examples")
    if n_train is not None and n_train < cfg.min_train_examples:
        recs.append(
            Recommendation(
                "more_data",
                f"Only {int(n_train)} training examples (< {cfg.min_train_examples}): "
                "collect more data for this domain.",
            )
        )
    precision, recall = metrics.get("precision_macro"), metrics.get("recall_macro")
    if precision is not None and recall is not None and abs(precision - recall) > 0.2:
        side = "misses labels (recall low)" if precision > recall else "over-predicts labels"
        recs.append(
            Recommendation(
                "rebalance", f"Precision/recall imbalance: the model {side}; rebalance classes."
            )
        )
    ppl = metrics.get("perplexity")
    if ppl is not None and ppl > cfg.max_perplexity:
        recs.append(
            Recommendation(
                "more_training",
                f"Perplexity {ppl:.1f} is above {cfg.max_perplexity}: train longer or on "
                "in-domain text.",
            )
        )
    p95 = metrics.get("p95_ms")
    if p95 is not None and p95 > cfg.max_latency_p95_ms:
        recs.append(
            Recommendation(
                "optimize",
                f"p95 latency {p95:.0f} ms exceeds {cfg.max_latency_p95_ms:.0f} ms: "
                "quantize or prune (`qlp optimize`).",
            )
        )
    if comparison is not None and comparison.verdict in ("worse", "mixed"):
        recs.append(
            Recommendation(
                "keep_baseline",
                "Regressed against the baseline on " + ", ".join(comparison.regressed) + ": "
                "do not promote; keep the baseline in production.",
            )
        )
    return recs


def build_report(
    metrics: dict[str, Any],
    cfg: EvaluationConfig,
    *,
    baseline: dict[str, float] | None = None,
) -> EvaluationReport:
    """Grade, pass/fail, recommendations and (optionally) a baseline comparison."""
    numeric = {
        k: float(v)
        for k, v in metrics.items()
        if isinstance(v, int | float) and not isinstance(v, bool)
    }
    score, grade = grade_for(numeric, cfg)
    failures = []
    order = [*GRADES, "F"]
    if order.index(grade) > order.index(cfg.pass_grade):
        failures.append(f"grade {grade} is below the passing grade {cfg.pass_grade}")
    ppl = numeric.get("perplexity")
    if ppl is not None and ppl > cfg.max_perplexity:
        failures.append(f"perplexity {ppl:.2f} > {cfg.max_perplexity}")
    p95 = numeric.get("p95_ms")
    if p95 is not None and p95 > cfg.max_latency_p95_ms:
        failures.append(f"p95 latency {p95:.1f} ms > {cfg.max_latency_p95_ms} ms")
    comparison = (
        compare(numeric, baseline, tolerance=cfg.regression_tolerance) if baseline else None
    )
    return EvaluationReport(
        metrics=numeric,
        score=score,
        grade=grade,
        passed=not failures,
        failures=failures,
        recommendations=recommend(metrics, cfg, grade, comparison),
        comparison=comparison,
    )


__all__ = [
    "LOWER_IS_BETTER",
    "Comparison",
    "EvaluationReport",
    "MetricDelta",
    "Recommendation",
    "build_report",
    "compare",
    "grade_for",
    "quality_score",
    "recommend",
]
