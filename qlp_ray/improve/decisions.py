"""Pure decision logic of the continual-learning loop (no Ray, no I/O).

Three questions, each answered with the numbers that decided it:

1. *Retrain?* A domain with at least ``min_new_samples`` new high-quality examples
   since its last training, ordered weakest first (analytics weights).
2. *Which method?* SFT on good examples, or DPO on preference pairs from the production
   adapter (:func:`choose_method`).
3. *Register the candidate?* Its held-out metric beats production by at least the
   relative ``margin`` (direction-aware: lower perplexity is better).
4. *Promote after the experiment?* One-sided two-proportion z-test on the success
   rate (e.g. thumbs-up) of treatment vs control: promote when significantly better,
   roll back when significantly worse or when the sample or time budget runs out.

Idempotency keys name a step by its inputs (domain, data hash, production version),
so a restarted orchestrator finds the step already recorded and does not repeat it.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

from qlp_ray.core.errors import InvalidRequest

#: Metrics where smaller is better; every other metric is "higher is better".
LOWER_IS_BETTER = frozenset({"perplexity", "loss", "eval_loss", "nll", "latency_ms", "p50_ms",
                             "p95_ms", "p99_ms", "ttft_ms"})  # fmt: skip

ExperimentOutcome = Literal["promote", "rollback", "continue"]
Method = Literal["sft", "dpo"]


def idempotency_key(step: str, domain: str, *parts: object) -> str:
    """A stable key for one orchestrator step, e.g. ``train:api:<data sha>:v3``."""
    digest = hashlib.sha256("\x1f".join(map(str, parts)).encode()).hexdigest()[:16]
    return f"{step}:{domain}:{digest}"


@dataclass(frozen=True)
class TrainPlan:
    domain: str
    new_samples: int
    weight: float
    reason: str


def plan_training(
    new_samples: Mapping[str, int],
    min_new_samples: int,
    weights: Mapping[str, float] | None = None,
) -> list[TrainPlan]:
    """Domains due for an incremental adapter, weakest (highest weight) first."""
    if min_new_samples < 1:
        raise InvalidRequest(f"min_new_samples must be >= 1, got {min_new_samples}")
    w = weights or {}
    plans = [
        TrainPlan(d, n, w.get(d, 1.0), f"{n} new high-quality samples >= {min_new_samples}")
        for d, n in new_samples.items()
        if n >= min_new_samples
    ]
    return sorted(plans, key=lambda p: (-p.weight, -p.new_samples, p.domain))


def choose_method(
    configured: str, pairs: int, min_pairs: int, has_production: bool
) -> tuple[Method, str]:
    """``(method, why)``: ``sft``/``dpo`` as configured; ``auto`` picks DPO when there are
    ``min_pairs`` training pairs and a production adapter to start from, else SFT."""
    if configured == "sft":
        return "sft", "improve.method is sft"
    if configured == "dpo":
        if pairs < 1:
            raise InvalidRequest("improve.method is dpo but the feedback holds no preference pairs")
        return "dpo", f"improve.method is dpo ({pairs} pairs)"
    if configured != "auto":
        raise InvalidRequest(f"improve.method must be sft, dpo or auto, got {configured!r}")
    if not has_production:
        return "sft", "auto: no production adapter to start DPO from"
    if pairs < min_pairs:
        return "sft", f"auto: {pairs} preference pairs < improve.min_pairs {min_pairs}"
    return "dpo", f"auto: {pairs} preference pairs >= improve.min_pairs {min_pairs}"


@dataclass(frozen=True)
class CandidateVerdict:
    register: bool
    metric: str
    candidate: float
    production: float | None
    improvement: float | None  # relative, positive = better
    margin: float
    reason: str

    def to_dict(self) -> dict[str, object]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


def relative_improvement(metric: str, candidate: float, production: float) -> float:
    """``(prod - cand) / |prod|`` for lower-is-better metrics, ``(cand - prod) / |prod|`` else."""
    base = abs(production) if production != 0 else 1e-12
    delta = production - candidate if metric in LOWER_IS_BETTER else candidate - production
    return delta / base


def judge_candidate(
    metric: str,
    candidate: Mapping[str, float],
    production: Mapping[str, float] | None,
    margin: float,
) -> CandidateVerdict:
    """Register the candidate only if it beats production by ``margin`` on ``metric``."""
    if metric not in candidate:
        raise InvalidRequest(f"candidate metrics lack {metric!r} (have {sorted(candidate)})")
    cand = float(candidate[metric])
    if not math.isfinite(cand):
        return CandidateVerdict(False, metric, cand, None, None, margin, "candidate is not finite")
    if production is None or metric not in production:
        return CandidateVerdict(True, metric, cand, None, None, margin, "no production adapter")
    prod = float(production[metric])
    imp = relative_improvement(metric, cand, prod)
    ok = imp >= margin - 1e-9  # a float hair below an exact margin still meets it
    verdict = "beats" if ok else "does not beat"
    reason = f"{metric} {cand:.4g} vs {prod:.4g}: {imp:+.1%} {verdict} the {margin:.0%} margin"
    return CandidateVerdict(ok, metric, cand, prod, imp, margin, reason)


@dataclass(frozen=True)
class VariantStats:
    """Successes out of trials for one experiment arm (e.g. thumbs-up / rated requests)."""

    trials: int
    successes: int

    def __post_init__(self) -> None:
        if not 0 <= self.successes <= self.trials:
            raise InvalidRequest(
                f"need 0 <= successes <= trials, got {self.successes}/{self.trials}"
            )

    @property
    def rate(self) -> float:
        return self.successes / self.trials if self.trials else 0.0


@dataclass(frozen=True)
class ExperimentVerdict:
    outcome: ExperimentOutcome
    z: float | None
    p_value: float | None
    control_rate: float
    treatment_rate: float
    reason: str
    numbers: dict[str, float] = field(default_factory=dict)


def _normal_sf(z: float) -> float:
    """P(Z > z) for a standard normal."""
    return 0.5 * math.erfc(z / math.sqrt(2.0))


def two_proportion_z(control: VariantStats, treatment: VariantStats) -> tuple[float, float]:
    """Pooled z statistic for treatment - control and its one-sided p-value (better)."""
    n1, n2 = control.trials, treatment.trials
    pooled = (control.successes + treatment.successes) / (n1 + n2)
    se = math.sqrt(pooled * (1 - pooled) * (1 / n1 + 1 / n2))
    if se == 0:
        diff = treatment.rate - control.rate
        return (
            (0.0, 0.5) if diff == 0 else (math.copysign(math.inf, diff), 0.0 if diff > 0 else 1.0)
        )
    z = (treatment.rate - control.rate) / se
    return z, _normal_sf(z)


def judge_experiment(
    control: VariantStats,
    treatment: VariantStats,
    *,
    alpha: float = 0.05,
    min_trials: int = 30,
    max_trials: int = 1000,
    elapsed_s: float = 0.0,
    max_s: float = 0.0,
) -> ExperimentVerdict:
    """promote / rollback / continue from the arms' success counts; an experiment older
    than ``max_s`` (> 0) without a significant gain is rolled back."""
    if not 0 < alpha < 0.5:
        raise InvalidRequest(f"alpha must be in (0, 0.5), got {alpha}")
    c, t = control.rate, treatment.rate
    numbers = {"control_trials": control.trials, "treatment_trials": treatment.trials,
               "control_rate": c, "treatment_rate": t}  # fmt: skip

    def verdict(outcome: ExperimentOutcome, p: float | None, reason: str) -> ExperimentVerdict:
        return ExperimentVerdict(outcome, numbers.get("z"), p, c, t, reason, numbers)

    out_of_time = max_s > 0 and elapsed_s >= max_s
    numbers["elapsed_s"] = round(elapsed_s, 3)
    if min(control.trials, treatment.trials) < min_trials:
        if out_of_time:
            return verdict("rollback", None, f"time budget {max_s:g} s spent before "
                           f"{min_trials} trials per arm")  # fmt: skip
        return verdict("continue", None, f"waiting for {min_trials} trials per arm")
    z, p_better = two_proportion_z(control, treatment)
    p_worse = 1.0 - p_better
    numbers.update(z=z, p_better=p_better, p_worse=p_worse)
    if p_better < alpha:
        return verdict(
            "promote", p_better, f"treatment {t:.1%} > control {c:.1%} (p={p_better:.3g})"
        )
    if p_worse < alpha:
        return verdict(
            "rollback", p_worse, f"treatment {t:.1%} < control {c:.1%} (p={p_worse:.3g})"
        )
    if min(control.trials, treatment.trials) >= max_trials:
        return verdict("rollback", p_better, f"no significant gain after {max_trials} trials/arm")
    if out_of_time:
        return verdict("rollback", p_better, f"no significant gain within {max_s:g} s")
    return verdict("continue", p_better, f"not significant yet (p={p_better:.3g})")
