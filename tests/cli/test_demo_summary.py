"""The demo's summary maths and its pass/fail checks (pure, no Ray)."""

from __future__ import annotations

from qlp_ray.cli.demo_loop import AdapterSummary, RequestResult, check_summary, summarize


def _result(expected, routed, ok=True, ms=10.0, adapter="x"):
    return RequestResult("p", expected, routed, adapter if routed else None, 0.5, ms, ok)


def test_summary_counts_accuracy_and_percentiles():
    adapters = [AdapterSummary("api", "api", 1, True, 2.0, 1.5)]
    results = [_result("api", "api", ms=m) for m in (10, 20, 30, 40)]
    results += [_result("api", "ml", ms=50), _result("api", None, ok=False, ms=1)]
    s = summarize(adapters, results)
    assert s["requests"] == {"sent": 6, "ok": 5}
    assert s["routing_accuracy"] == round(4 / 6, 4)
    # numpy linear-interpolated percentiles of [10, 20, 30, 40, 50]
    assert s["latency_ms"] == {"p50": 30.0, "p95": 48.0}
    assert s["per_domain"]["api"] == {"sent": 6, "ok": 5, "correct": 4}
    problems = check_summary(s)
    assert any("1 requests failed" in p for p in problems)
    assert any("routing accuracy" in p for p in problems)


def test_check_summary_flags_unsigned_and_loss_not_dropping():
    adapters = [
        AdapterSummary("a", "api", 1, False, 2.0, 1.0),
        AdapterSummary("b", "ml", 1, True, 2.0, 2.5),
    ]
    s = summarize(adapters, [_result("api", "api")])
    problems = check_summary(s)
    assert "adapter a is not signed" in problems
    assert any("adapter b: eval loss did not drop" in p for p in problems)


def test_check_summary_passes_a_good_run():
    adapters = [AdapterSummary("api", "api", 1, True, 2.0, 1.0)]
    s = summarize(adapters, [_result("api", "api") for _ in range(10)])
    assert check_summary(s) == []
