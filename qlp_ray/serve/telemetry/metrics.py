"""Prometheus metrics of the serving path, through ``ray.serve.metrics``.

Ray's metrics agent exports them on its Prometheus endpoint with a ``ray_`` prefix
(``qlp_model_requests_total`` becomes ``ray_qlp_model_requests_total``); the Grafana dashboard
in ``configs/grafana/qlp_dashboard.json`` queries those names. The app calls the small
``record_*``/``set_*`` functions below; the metric objects are created lazily, once per
process (a Serve replica), so importing this module costs nothing.
"""

from __future__ import annotations

import functools
import logging
from typing import Any

logger = logging.getLogger(__name__)

EXPORT_PREFIX = "ray_"  # what Ray's Prometheus exporter puts in front of every custom metric

REQUESTS_TOTAL = "qlp_model_requests_total"
FAILURES_TOTAL = "qlp_model_failures_total"
LATENCY_SECONDS = "qlp_model_latency_seconds"
COST_SAVINGS_USD = "qlp_cost_savings_usd"
ROUTER_CONFIDENCE = "qlp_router_confidence"
ROUTER_FALLBACKS_TOTAL = "qlp_router_fallbacks_total"
CACHE_HIT_RATIO = "qlp_cache_hit_ratio"
EXPERIMENT_ASSIGNMENTS_TOTAL = "qlp_experiment_assignments_total"
REJECTED_TOTAL = "qlp_rejected_requests_total"

METRIC_NAMES = (
    REQUESTS_TOTAL,
    FAILURES_TOTAL,
    LATENCY_SECONDS,
    COST_SAVINGS_USD,
    ROUTER_CONFIDENCE,
    ROUTER_FALLBACKS_TOTAL,
    CACHE_HIT_RATIO,
    EXPERIMENT_ASSIGNMENTS_TOTAL,
    REJECTED_TOTAL,
)

# seconds: 5 ms .. 60 s, roughly x2 per bucket
LATENCY_BOUNDARIES = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0]
CONFIDENCE_BOUNDARIES = [0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99]


@functools.cache
def _metrics() -> dict[str, Any]:
    from ray.serve import metrics as m

    return {
        REQUESTS_TOTAL: m.Counter(
            REQUESTS_TOTAL,
            description="Requests served, by model (adapter/stack) and domain.",
            tag_keys=("model", "domain"),
        ),
        FAILURES_TOTAL: m.Counter(
            FAILURES_TOTAL,
            description="Failed requests, by model, domain and error type.",
            tag_keys=("model", "domain", "error"),
        ),
        LATENCY_SECONDS: m.Histogram(
            LATENCY_SECONDS,
            description="End-to-end request latency in seconds.",
            boundaries=LATENCY_BOUNDARIES,
            tag_keys=("model",),
        ),
        COST_SAVINGS_USD: m.Gauge(
            COST_SAVINGS_USD,
            description="Cumulative USD saved versus sending every request to the reference "
            "external model (per replica).",
        ),
        ROUTER_CONFIDENCE: m.Histogram(
            ROUTER_CONFIDENCE,
            description="Calibrated confidence of routing decisions.",
            boundaries=CONFIDENCE_BOUNDARIES,
            tag_keys=("mode",),
        ),
        ROUTER_FALLBACKS_TOTAL: m.Counter(
            ROUTER_FALLBACKS_TOTAL,
            description="Requests routed to the fallback target.",
            tag_keys=("mode",),
        ),
        CACHE_HIT_RATIO: m.Gauge(
            CACHE_HIT_RATIO,
            description="Hit ratio of the composition cache (per replica).",
        ),
        EXPERIMENT_ASSIGNMENTS_TOTAL: m.Counter(
            EXPERIMENT_ASSIGNMENTS_TOTAL,
            description="A/B assignments by experiment and variant.",
            tag_keys=("experiment", "variant"),
        ),
        REJECTED_TOTAL: m.Counter(
            REJECTED_TOTAL,
            description="Requests answered 429/503, by OpenAI error code: rate_limit_exceeded "
            "(gateway admission), overloaded (a router/compositor queue was full), ...",
            tag_keys=("code",),
        ),
    }


def record_request(
    model: str, domain: str | None, latency_s: float, error: str | None = None
) -> None:
    """Count one request (and its failure, if ``error`` names one) and observe its latency."""
    ms = _metrics()
    tags = {"model": model, "domain": domain or "none"}
    ms[REQUESTS_TOTAL].inc(1, tags=tags)
    if error is not None:
        ms[FAILURES_TOTAL].inc(1, tags={**tags, "error": error})
    ms[LATENCY_SECONDS].observe(latency_s, tags={"model": model})


def record_route(mode: str, confidence: float, fallback: bool) -> None:
    """Observe one routing decision's confidence; count it if it went to the fallback."""
    ms = _metrics()
    ms[ROUTER_CONFIDENCE].observe(max(confidence, 1e-6), tags={"mode": mode})
    if fallback:
        ms[ROUTER_FALLBACKS_TOTAL].inc(1, tags={"mode": mode})


def record_assignment(experiment: str, variant: str) -> None:
    _metrics()[EXPERIMENT_ASSIGNMENTS_TOTAL].inc(
        1, tags={"experiment": experiment, "variant": variant}
    )


def set_cost_savings(total_usd: float) -> None:
    _metrics()[COST_SAVINGS_USD].set(total_usd)


def set_cache_hit_ratio(hits: int, misses: int) -> None:
    total = hits + misses
    _metrics()[CACHE_HIT_RATIO].set(hits / total if total else 0.0)


def record_rejection(code: str) -> None:
    """Count one request answered 429/503 (``code``: its OpenAI error code)."""
    _metrics()[REJECTED_TOTAL].inc(1, tags={"code": code})
