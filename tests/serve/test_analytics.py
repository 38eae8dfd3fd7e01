"""Analytics: streaming percentiles against numpy, per-adapter counters, ranking, comparison."""

from __future__ import annotations

import numpy as np
import pytest

from qlp_ray.core.errors import InvalidRequest, NotFound
from qlp_ray.serve.telemetry.analytics import Analytics, LogHistogram


@pytest.mark.parametrize("dist", ["lognormal", "uniform", "bimodal"])
def test_log_histogram_quantiles_within_one_percent_of_numpy(dist):
    rng = np.random.default_rng(0)
    if dist == "lognormal":
        values = rng.lognormal(mean=-3, sigma=1.0, size=50_000)
    elif dist == "uniform":
        values = rng.uniform(0.005, 0.5, size=50_000)
    else:
        values = np.concatenate([rng.normal(0.02, 0.002, 40_000), rng.normal(1.5, 0.1, 10_000)])
    h = LogHistogram()
    for v in values:
        h.add(float(v))
    for q in (0.5, 0.95, 0.99):
        exact = float(np.quantile(values, q))
        assert h.quantile(q) == pytest.approx(exact, rel=0.011), q
    assert h.count == len(values)
    assert h.mean == pytest.approx(float(values.mean()))
    # memory is a fixed array of counters regardless of the stream length
    assert len(h.counts) == h.n_buckets + 1 < 1000


def test_log_histogram_edges_and_merge():
    h = LogHistogram()
    assert np.isnan(h.quantile(0.5))
    h.add(1e-6)  # below range: kept exactly as the min
    h.add(5e4)  # above range: clamped bucket, exact max kept
    assert h.quantile(0.0) == 1e-6 and h.quantile(1.0) == 5e4
    with pytest.raises(ValueError):
        h.quantile(1.5)
    a, b = LogHistogram(), LogHistogram()
    for v in (0.01, 0.02, 0.03):
        a.add(v)
    for v in (0.04, 0.05):
        b.add(v)
    a.merge(b)
    assert a.count == 5 and a.quantile(0.5) == pytest.approx(0.03, rel=0.011)
    with pytest.raises(ValueError):
        a.merge(LogHistogram(growth=1.05))


def _filled() -> Analytics:
    an = Analytics()
    for i in range(100):
        an.record_request(
            "dataeng-v1",
            0.010 + i * 0.0001,
            success=i % 10 != 0,
            error_type="timeout",
            domain="dataeng",
        )
    for _ in range(20):
        an.record_request("ml-v1", 0.050, domain="ml")
    an.record_request("ml-v1", 0.050, success=False, error_type="adapter_error")
    for r in (5, 4, 4):
        an.record_feedback("dataeng-v1", rating=r, thumbs=True)
    an.record_feedback("dataeng-v1", thumbs=False, accuracy=0.5)
    an.record_feedback("ml-v1", rating=2, thumbs=False, accuracy=1.0)
    return an


def test_adapter_summary_numbers():
    s = _filled().summary("dataeng-v1")
    assert s["requests"] == 100 and s["successes"] == 90
    assert s["failures_by_type"] == {"timeout": 10}
    assert s["success_rate"] == pytest.approx(0.9)
    assert s["latency_ms"]["p50"] == pytest.approx(14.95, rel=0.011)
    assert s["latency_ms"]["p99"] == pytest.approx(19.801, rel=0.011)
    assert s["ratings"] == {"4": 2, "5": 1}
    assert s["mean_rating"] == pytest.approx(13 / 3)
    assert s["thumbs_ratio"] == pytest.approx(0.75)
    assert s["accuracy"] == pytest.approx(0.5)
    assert s["domains"] == {"dataeng": 100}


def test_top_and_compare():
    an = _filled()
    assert [r["adapter"] for r in an.top("requests")] == ["dataeng-v1", "ml-v1"]
    assert [r["adapter"] for r in an.top("p95", n=1)] == ["dataeng-v1"]  # lower is better
    assert an.top("mean_rating")[0] == {
        "adapter": "dataeng-v1",
        "mean_rating": pytest.approx(13 / 3),
    }
    cmp = an.compare("dataeng-v1", "ml-v1")
    assert cmp["b_minus_a"]["requests"] == -79
    assert cmp["b_minus_a"]["accuracy"] == pytest.approx(0.5)
    assert cmp["b_minus_a"]["latency_p50_ms"] == pytest.approx(50 - 14.95, rel=0.02)
    with pytest.raises(InvalidRequest, match="unknown metric"):
        an.top("vibes")
    with pytest.raises(NotFound):
        an.summary("nope")
    with pytest.raises(InvalidRequest, match="rating"):
        an.record_feedback("ml-v1", rating=6)
