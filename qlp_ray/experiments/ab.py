"""A/B experiments: definition, per-request assignment, outcome recording, analysis, bandit.

Pure Python + numpy/scipy, no Ray. The Serve app holds one :class:`ExperimentBook`; each
request asks it for an :class:`Assignment` (a few microseconds), and the outcome of the
request (success, latency, later a feedback score) is recorded against the variant.

Strategies:

- ``sticky``: a user id hashes (BLAKE2b of experiment id + user id) to a point in [0, 1)
  mapped onto the cumulative weights, so a user always sees the same variant.
- ``weighted``: an independent weighted draw per request.
- ``random``: a uniform draw per request (weights ignored).
- ``thompson`` (or ``bandit: true``): the weights are ignored and every request draws one
  sample from each variant's Beta(1 + successes, 1 + failures) posterior and takes the
  largest (Thompson sampling), so traffic shifts towards the variant that succeeds more often.

Which requests take part (``applies_to``, ``domains``, ``metadata``, the time window) and how
the serving path persists and counts outcomes: :mod:`qlp_ray.experiments.runtime`.
"""

from __future__ import annotations

import bisect
import hashlib
import logging
import math
import random
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from scipy import stats

from qlp_ray.core.config import read_yaml
from qlp_ray.core.errors import ConfigError, InvalidRequest, NotFound

logger = logging.getLogger(__name__)

Strategy = Literal["sticky", "weighted", "random", "thompson"]
SuccessSignal = Literal["feedback", "served"]


class VariantSpec(BaseModel):
    """One arm of an experiment: a name and what serves it (adapter id or ``a+b`` stack)."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(
        min_length=1, max_length=64, description="Variant name, unique per experiment."
    )
    target: str = Field(min_length=1, description="Adapter id or stack ('a+b', 'a:0.7+b:0.3').")
    weight: float = Field(1.0, ge=0, description="Relative traffic weight (0 = no traffic).")


class ExperimentSpec(BaseModel):
    """An experiment definition, from YAML config or ``POST /v1/admin/experiments``."""

    model_config = ConfigDict(extra="forbid")

    id: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$", description="Id.")
    description: str = Field("", description="What the experiment tests.")
    variants: list[VariantSpec] = Field(
        min_length=2, description="Two or more arms; first = control."
    )
    strategy: Strategy = Field("sticky", description="How a request picks its variant.")
    bandit: bool = Field(False, description="Thompson-sampling bandit instead of fixed weights.")
    applies_to: list[str] = Field(
        default_factory=list,
        description="Requested models that join: 'auto' = routed requests, an adapter id = "
        "requests naming it or routed to it ([] = routed requests only).",
    )
    domains: list[str] = Field(default_factory=list, description="Only these domains ([] = all).")
    metadata: dict[str, str] = Field(
        default_factory=dict,
        description="Only requests whose metadata has these key=values ('user' = request user).",
    )
    start: datetime | None = Field(None, description="Active from (UTC); None = now.")
    end: datetime | None = Field(None, description="Active until (UTC); None = open-ended.")
    confidence: float = Field(0.95, gt=0.5, lt=1, description="Confidence to declare a winner.")
    power: float = Field(0.8, gt=0.5, lt=1, description="Power for the minimum sample size.")
    min_detectable_effect: float = Field(
        0.05, gt=0, lt=1, description="Absolute success-rate lift the test must detect."
    )
    success: SuccessSignal = Field(
        "feedback",
        description="What counts as a success: 'feedback' (thumbs up or a rating >= "
        "success_rating; errors fail) or 'served' (answered without error).",
    )
    success_rating: float = Field(
        4.0, ge=1, le=5, description="Lowest 1-5 rating that counts as a success."
    )

    @property
    def is_bandit(self) -> bool:
        return self.bandit or self.strategy == "thompson"

    @model_validator(mode="after")
    def _check(self) -> ExperimentSpec:
        names = [v.name for v in self.variants]
        if len(set(names)) != len(names):
            raise ValueError(f"variant names must be unique, got {names}")
        if sum(v.weight for v in self.variants) <= 0:
            raise ValueError("variant weights must sum to more than 0")
        for when in (self.start, self.end):
            if when is not None and when.tzinfo is None:
                raise ValueError(f"start/end must carry a timezone, got {when.isoformat()}")
        if self.start and self.end and self.end <= self.start:
            raise ValueError(f"end ({self.end}) must be after start ({self.start})")
        return self


@dataclass
class VariantStats:
    """Running counters of one variant."""

    impressions: int = 0
    successes: int = 0
    failures: int = 0
    errors: int = 0
    latency_sum: float = 0.0
    latency_count: int = 0
    feedback_sum: float = 0.0
    feedback_count: int = 0

    @property
    def outcomes(self) -> int:
        return self.successes + self.failures

    @property
    def success_rate(self) -> float:
        return self.successes / self.outcomes if self.outcomes else 0.0


@dataclass(frozen=True)
class Assignment:
    """The variant one request was given."""

    experiment_id: str
    variant: str
    target: str


def wilson_interval(successes: int, n: int, confidence: float) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion (``(0, 1)`` when ``n == 0``)."""
    if n == 0:
        return (0.0, 1.0)
    z = float(stats.norm.ppf(1 - (1 - confidence) / 2))
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


def diff_interval(s1: int, n1: int, s2: int, n2: int, confidence: float) -> tuple[float, float]:
    """Normal (Wald) interval of ``p2 - p1``."""
    if n1 == 0 or n2 == 0:
        return (-1.0, 1.0)
    z = float(stats.norm.ppf(1 - (1 - confidence) / 2))
    p1, p2 = s1 / n1, s2 / n2
    se = math.sqrt(p1 * (1 - p1) / n1 + p2 * (1 - p2) / n2)
    return (p2 - p1 - z * se, p2 - p1 + z * se)


def min_sample_size(baseline: float, effect: float, confidence: float, power: float) -> int:
    """Per-variant sample size to detect ``baseline -> baseline + effect`` (two-sided z-test)."""
    p1 = min(max(baseline, 1e-6), 1 - 1e-6)
    p2 = min(max(p1 + effect, 1e-6), 1 - 1e-6)
    if p2 == p1:
        raise ValueError("effect must move the success rate")
    z_a = float(stats.norm.ppf(1 - (1 - confidence) / 2))
    z_b = float(stats.norm.ppf(power))
    p_bar = (p1 + p2) / 2
    num = z_a * math.sqrt(2 * p_bar * (1 - p_bar)) + z_b * math.sqrt(p1 * (1 - p1) + p2 * (1 - p2))
    return math.ceil(num * num / (p2 - p1) ** 2)


def chi_square_success(successes: list[int], failures: list[int]) -> tuple[float, float, int]:
    """Pearson chi-square (no continuity correction) on the variants x {success, failure} table.

    Returns ``(chi2, p_value, dof)``; ``(0, 1, dof)`` when a column is all zero (no test possible).
    """
    table = np.array([successes, failures], dtype=float).T
    dof = (table.shape[0] - 1) * (table.shape[1] - 1)
    if (table.sum(axis=0) == 0).any() or (table.sum(axis=1) == 0).any():
        return (0.0, 1.0, dof)
    chi2, p, dof, _ = stats.chi2_contingency(table, correction=False)
    return (float(chi2), float(p), int(dof))


def prob_best(
    stats_by_variant: list[VariantStats], draws: int = 20000, seed: int = 0
) -> np.ndarray:
    """Posterior probability that each variant has the highest success rate (Beta(1+s, 1+f))."""
    rng = np.random.default_rng(seed)
    samples = np.stack(
        [rng.beta(1 + s.successes, 1 + s.failures, size=draws) for s in stats_by_variant]
    )
    wins = np.bincount(samples.argmax(axis=0), minlength=len(stats_by_variant))
    return wins / draws


class Experiment:
    """A running experiment: assignment and outcome counters of its variants."""

    def __init__(self, spec: ExperimentSpec, rng: random.Random | None = None) -> None:
        self.spec = spec
        self.stats = {v.name: VariantStats() for v in spec.variants}
        self._names = [v.name for v in spec.variants]
        self._targets = {v.name: v.target for v in spec.variants}
        total = sum(v.weight for v in spec.variants)
        acc, cum = 0.0, []
        for v in spec.variants:
            acc += v.weight / total
            cum.append(acc)
        cum[-1] = 1.0
        self._cum = cum
        self._rng = rng or random.Random()
        self._salt = spec.id.encode()
        self._domains = frozenset(spec.domains)

    def active(self, now: datetime | None = None) -> bool:
        now = now or datetime.now(UTC)
        s, e = self.spec.start, self.spec.end
        return (s is None or now >= s) and (e is None or now < e)

    def matches(self, domain: str | None, metadata: dict[str, str] | None) -> bool:
        """Whether a request with this domain and metadata is in the experiment's audience."""
        if self._domains and domain not in self._domains:
            return False
        if self.spec.metadata:
            md = metadata or {}
            return all(md.get(k) == v for k, v in self.spec.metadata.items())
        return True

    def _pick(self, user_id: str | None) -> str:
        if self.spec.is_bandit:
            best, best_draw = self._names[0], -1.0
            for name in self._names:
                s = self.stats[name]
                draw = self._rng.betavariate(1 + s.successes, 1 + s.failures)
                if draw > best_draw:
                    best, best_draw = name, draw
            return best
        if self.spec.strategy == "random":
            return self._names[self._rng.randrange(len(self._names))]
        if self.spec.strategy == "sticky" and user_id is not None:
            digest = hashlib.blake2b(user_id.encode(), digest_size=8, key=self._salt[:64]).digest()
            point = int.from_bytes(digest, "big") / 18446744073709551616.0
        else:  # weighted, or sticky without a user id
            point = self._rng.random()
        return self._names[min(bisect.bisect_right(self._cum, point), len(self._names) - 1)]

    def assign(self, user_id: str | None = None) -> Assignment:
        """Pick a variant for one request and count the impression."""
        name = self._pick(user_id)
        self.stats[name].impressions += 1
        return Assignment(self.spec.id, name, self._targets[name])

    def record_outcome(
        self,
        variant: str,
        success: bool,
        latency_s: float | None = None,
        feedback: float | None = None,
    ) -> None:
        """Count the outcome of one request served by ``variant``."""
        s = self._variant(variant)
        if success:
            s.successes += 1
        else:
            s.failures += 1
        if latency_s is not None:
            s.latency_sum += latency_s
            s.latency_count += 1
        if feedback is not None:
            self.record_feedback(variant, feedback)

    def record_feedback(self, variant: str, score: float) -> None:
        """Add a feedback score (e.g. a 1-5 rating) to ``variant``."""
        s = self._variant(variant)
        s.feedback_sum += float(score)
        s.feedback_count += 1

    def _variant(self, name: str) -> VariantStats:
        try:
            return self.stats[name]
        except KeyError:
            raise NotFound(f"experiment {self.spec.id!r} has no variant {name!r}") from None

    def analyze(self) -> dict[str, Any]:
        """Chi-square test, confidence intervals, sample sizes, winner, bandit P(best)."""
        spec = self.spec
        ordered = [self.stats[n] for n in self._names]
        chi2, p_value, dof = chi_square_success(
            [s.successes for s in ordered], [s.failures for s in ordered]
        )
        control = ordered[0]
        baseline = control.success_rate if control.outcomes else 0.5
        need = min_sample_size(
            min(baseline, 1 - spec.min_detectable_effect),
            spec.min_detectable_effect,
            spec.confidence,
            spec.power,
        )
        p_best = prob_best(ordered)
        shown = sum(s.impressions for s in ordered)
        variants = []
        for name, s, pb in zip(self._names, ordered, p_best, strict=True):
            lo, hi = wilson_interval(s.successes, s.outcomes, spec.confidence)
            dlo, dhi = diff_interval(
                control.successes, control.outcomes, s.successes, s.outcomes, spec.confidence
            )
            variants.append(
                {
                    "name": name,
                    "target": self._targets[name],
                    "impressions": s.impressions,
                    "successes": s.successes,
                    "failures": s.failures,
                    "errors": s.errors,
                    "success_rate": s.success_rate,
                    "ci": [lo, hi],
                    "lift_vs_control": s.success_rate - control.success_rate,
                    "lift_ci": [dlo, dhi],
                    "mean_latency_s": s.latency_sum / s.latency_count if s.latency_count else None,
                    "mean_feedback": s.feedback_sum / s.feedback_count
                    if s.feedback_count
                    else None,
                    "prob_best": float(pb),
                    "traffic_share": s.impressions / shown if shown else None,
                    # a Thompson bandit sends each variant P(best) of the traffic
                    "bandit_share": float(pb) if spec.is_bandit else None,
                }
            )
        significant = p_value < 1 - spec.confidence
        enough = all(s.outcomes >= need for s in ordered)
        winner = None
        if significant and enough:
            winner = max(variants, key=lambda v: v["success_rate"])["name"]
        return {
            "id": spec.id,
            "strategy": "thompson" if spec.is_bandit else spec.strategy,
            "success_signal": spec.success,
            "active": self.active(),
            "confidence": spec.confidence,
            "chi2": chi2,
            "dof": dof,
            "p_value": p_value,
            "significant": significant,
            "min_sample_size_per_variant": need,
            "enough_data": enough,
            "winner": winner,
            "variants": variants,
        }


class ExperimentBook:
    """All experiments of one serving process; assigns a request to the first one matching."""

    def __init__(self, seed: int | None = None) -> None:
        self._experiments: dict[str, Experiment] = {}
        self._rng = random.Random(seed)

    def add(self, spec: ExperimentSpec | dict[str, Any]) -> Experiment:
        if isinstance(spec, dict):
            spec = ExperimentSpec.model_validate(spec)
        if spec.id in self._experiments:
            raise InvalidRequest(f"experiment {spec.id!r} already exists", param="id")
        exp = Experiment(spec, random.Random(self._rng.random()))
        self._experiments[spec.id] = exp
        logger.info("experiment %s added with %d variants", spec.id, len(spec.variants))
        return exp

    def remove(self, experiment_id: str) -> None:
        self.get(experiment_id)
        del self._experiments[experiment_id]

    def get(self, experiment_id: str) -> Experiment:
        try:
            return self._experiments[experiment_id]
        except KeyError:
            raise NotFound(f"no experiment {experiment_id!r}") from None

    def list(self) -> list[Experiment]:
        return list(self._experiments.values())

    def assign(
        self,
        user_id: str | None = None,
        domain: str | None = None,
        metadata: dict[str, str] | None = None,
        now: datetime | None = None,
    ) -> Assignment | None:
        """The assignment of the first active experiment whose audience matches, else None."""
        for exp in self._experiments.values():
            if exp.matches(domain, metadata) and exp.active(now):
                return exp.assign(user_id)
        return None


def load_experiment_file(path: str | Path) -> list[ExperimentSpec]:
    """Experiment specs from a YAML file with a top-level ``definitions:`` list."""

    data = read_yaml(path)
    items = data.get("definitions")
    if not isinstance(items, list):
        raise ConfigError(f"{path}: expected a top-level `definitions:` list of experiments")
    specs = []
    for i, item in enumerate(items):
        try:
            specs.append(ExperimentSpec.model_validate(item))
        except ValidationError as exc:
            raise ConfigError(f"{path}: definitions[{i}] is invalid: {exc}") from exc
    return specs
