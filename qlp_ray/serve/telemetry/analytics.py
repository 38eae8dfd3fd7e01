"""Per-adapter serving analytics with bounded memory.

Latency percentiles come from :class:`LogHistogram`: fixed logarithmic buckets between
``min_value`` and ``max_value`` whose width grows by ``growth`` per bucket, so any quantile is
returned within a relative error of about ``(growth - 1) / 2`` and memory stays a fixed array
of counters however many requests arrive. No Ray import; the Serve app owns one instance.
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from qlp_ray.core.errors import InvalidRequest, NotFound

logger = logging.getLogger(__name__)


class LogHistogram:
    """Streaming quantiles over positive values with fixed log-spaced buckets."""

    def __init__(
        self, min_value: float = 1e-4, max_value: float = 1e3, growth: float = 1.02
    ) -> None:
        if not 0 < min_value < max_value or growth <= 1:
            raise ValueError(
                f"need 0 < min_value < max_value and growth > 1, got "
                f"{min_value}, {max_value}, {growth}"
            )
        self.min_value = min_value
        self.growth = growth
        self._log_min = math.log(min_value)
        self._inv_log_g = 1.0 / math.log(growth)
        self.n_buckets = int(math.ceil(math.log(max_value / min_value) * self._inv_log_g)) + 1
        self.counts = [0] * (self.n_buckets + 1)  # index 0 holds values below min_value
        self.count = 0
        self.total = 0.0
        self.min = math.inf
        self.max = -math.inf

    def add(self, value: float) -> None:
        """Record one value (clamped into the bucket range; exact min/max are kept)."""
        if value < self.min_value:
            idx = 0
        else:
            idx = min(int((math.log(value) - self._log_min) * self._inv_log_g) + 1, self.n_buckets)
        self.counts[idx] += 1
        self.count += 1
        self.total += value
        if value < self.min:
            self.min = value
        if value > self.max:
            self.max = value

    def quantile(self, q: float) -> float:
        """The ``q``-quantile (0..1) estimate: the geometric centre of the bucket holding it."""
        if not 0 <= q <= 1:
            raise ValueError(f"quantile must be in [0, 1], got {q}")
        if self.count == 0:
            return math.nan
        rank = q * (self.count - 1)
        seen = 0
        for idx, c in enumerate(self.counts):
            seen += c
            if seen > rank:
                if idx == 0:
                    return self.min
                if idx == self.n_buckets:  # overflow bucket: values beyond max_value
                    return self.max
                lo = self.min_value * self.growth ** (idx - 1)
                est = lo * math.sqrt(self.growth)
                return min(max(est, self.min), self.max)
        return self.max

    def merge(self, other: LogHistogram) -> None:
        """Add another histogram with the same bucket layout (e.g. from another replica)."""
        if (other.min_value, other.growth, other.n_buckets) != (
            self.min_value,
            self.growth,
            self.n_buckets,
        ):
            raise ValueError("histograms have different bucket layouts")
        self.counts = [a + b for a, b in zip(self.counts, other.counts, strict=True)]
        self.count += other.count
        self.total += other.total
        self.min = min(self.min, other.min)
        self.max = max(self.max, other.max)

    @property
    def mean(self) -> float:
        return self.total / self.count if self.count else math.nan


@dataclass
class AdapterStats:
    """Counters of one adapter (or stack, or the fallback model)."""

    requests: int = 0
    successes: int = 0
    failures: Counter = field(default_factory=Counter)
    latency: LogHistogram = field(default_factory=LogHistogram)
    ratings: Counter = field(default_factory=Counter)
    thumbs_up: int = 0
    thumbs_down: int = 0
    accuracy_sum: float = 0.0
    accuracy_count: int = 0
    domains: Counter = field(default_factory=Counter)

    def summary(self) -> dict[str, Any]:
        n_ratings = sum(self.ratings.values())
        thumbs = self.thumbs_up + self.thumbs_down
        lat = self.latency

        def ms(q: float) -> float | None:
            return round(lat.quantile(q) * 1000, 3) if lat.count else None

        return {
            "requests": self.requests,
            "successes": self.successes,
            "failures": sum(self.failures.values()),
            "failures_by_type": dict(self.failures),
            "success_rate": self.successes / self.requests if self.requests else None,
            "latency_ms": {
                "p50": ms(0.5),
                "p95": ms(0.95),
                "p99": ms(0.99),
                "mean": round(lat.mean * 1000, 3) if lat.count else None,
            },
            "ratings": {str(k): self.ratings[k] for k in sorted(self.ratings)},
            "mean_rating": (
                sum(k * v for k, v in self.ratings.items()) / n_ratings if n_ratings else None
            ),
            "thumbs_up": self.thumbs_up,
            "thumbs_down": self.thumbs_down,
            "thumbs_ratio": self.thumbs_up / thumbs if thumbs else None,
            "accuracy": self.accuracy_sum / self.accuracy_count if self.accuracy_count else None,
            "domains": dict(self.domains),
        }


# metrics `top()` can rank by, and whether larger is better
RANKABLE = {
    "requests": True,
    "success_rate": True,
    "mean_rating": True,
    "thumbs_ratio": True,
    "accuracy": True,
    "p50": False,
    "p95": False,
    "p99": False,
}


class Analytics:
    """Per-adapter request, latency and feedback statistics."""

    def __init__(self) -> None:
        self._stats: dict[str, AdapterStats] = {}

    def _get(self, adapter: str) -> AdapterStats:
        s = self._stats.get(adapter)
        if s is None:
            s = self._stats[adapter] = AdapterStats()
        return s

    def record_request(
        self,
        adapter: str,
        latency_s: float,
        success: bool = True,
        error_type: str | None = None,
        domain: str | None = None,
    ) -> None:
        """Count one served request (hot path: a few dict lookups and one log)."""
        s = self._get(adapter)
        s.requests += 1
        if success:
            s.successes += 1
        else:
            s.failures[error_type or "unknown"] += 1
        s.latency.add(latency_s)
        if domain is not None:
            s.domains[domain] += 1

    def record_feedback(
        self,
        adapter: str,
        *,
        thumbs: bool | None = None,
        rating: int | None = None,
        accuracy: float | None = None,
    ) -> None:
        """Attach user feedback to an adapter's statistics."""
        if rating is not None and not 1 <= rating <= 5:
            raise InvalidRequest(f"rating must be 1-5, got {rating}", param="rating")
        if accuracy is not None and not 0 <= accuracy <= 1:
            raise InvalidRequest(f"accuracy must be in [0, 1], got {accuracy}", param="accuracy")
        s = self._get(adapter)
        if thumbs is True:
            s.thumbs_up += 1
        elif thumbs is False:
            s.thumbs_down += 1
        if rating is not None:
            s.ratings[int(rating)] += 1
        if accuracy is not None:
            s.accuracy_sum += accuracy
            s.accuracy_count += 1

    def adapters(self) -> list[str]:
        return sorted(self._stats)

    def summary(self, adapter: str) -> dict[str, Any]:
        if adapter not in self._stats:
            raise NotFound(f"no analytics for adapter {adapter!r}")
        return {"adapter": adapter, **self._stats[adapter].summary()}

    def snapshot(self) -> dict[str, Any]:
        """Every adapter's summary (the body of ``GET /v1/admin/analytics``)."""
        return {a: self.summary(a) for a in self.adapters()}

    def top(self, metric: str, n: int = 5) -> list[dict[str, Any]]:
        """The ``n`` best adapters by ``metric`` (adapters without that metric are skipped)."""
        if metric not in RANKABLE:
            raise InvalidRequest(
                f"unknown metric {metric!r}; choose one of {sorted(RANKABLE)}", param="metric"
            )
        rows = []
        for a in self.adapters():
            s = self.summary(a)
            value = s["latency_ms"][metric] if metric.startswith("p") else s[metric]
            if value is not None:
                rows.append({"adapter": a, metric: value})
        rows.sort(key=lambda r: r[metric], reverse=RANKABLE[metric])
        return rows[:n]

    def compare(self, a: str, b: str) -> dict[str, Any]:
        """Side-by-side summaries and the difference ``b - a`` of every numeric headline."""
        sa, sb = self.summary(a), self.summary(b)
        diff = {}
        for key in ("requests", "success_rate", "mean_rating", "thumbs_ratio", "accuracy"):
            if sa[key] is not None and sb[key] is not None:
                diff[key] = sb[key] - sa[key]
        for q in ("p50", "p95", "p99"):
            if sa["latency_ms"][q] is not None and sb["latency_ms"][q] is not None:
                diff[f"latency_{q}_ms"] = sb["latency_ms"][q] - sa["latency_ms"][q]
        return {"a": sa, "b": sb, "b_minus_a": diff}
