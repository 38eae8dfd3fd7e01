"""The Grafana dashboard is valid JSON whose panels query the metrics the app exports."""

from __future__ import annotations

import json
import re

import pytest

from qlp_ray.core.config import REPO_ROOT
from qlp_ray.serve.telemetry import metrics

DASHBOARD = REPO_ROOT / "configs" / "grafana" / "qlp_dashboard.json"


@pytest.fixture(scope="module")
def dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def _panel(dashboard: dict, title: str) -> dict:
    matches = [p for p in dashboard["panels"] if p["title"] == title]
    assert len(matches) == 1, f"panel {title!r} missing or duplicated"
    return matches[0]


def _exprs(panel: dict) -> list[str]:
    return [t["expr"] for t in panel["targets"]]


def test_dashboard_structure(dashboard):
    assert dashboard["uid"] and dashboard["title"] and dashboard["schemaVersion"] >= 30
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for p in dashboard["panels"]:
        assert (
            set(p["gridPos"]) == {"x", "y", "w", "h"}
            and p["gridPos"]["x"] + p["gridPos"]["w"] <= 24
        )
        refs = [t["refId"] for t in p["targets"]]
        assert len(refs) == len(set(refs)) and p["targets"]
    assert dashboard["templating"]["list"][0]["type"] == "datasource"


def test_required_panels_reference_exported_metric_names(dashboard):
    prefix = metrics.EXPORT_PREFIX
    usage = _panel(dashboard, "Usage by model")
    assert f"{prefix}{metrics.REQUESTS_TOTAL}" in _exprs(usage)[0]
    assert "by (model)" in _exprs(usage)[0]

    latency = _exprs(_panel(dashboard, "Latency p50/p95/p99"))
    quantiles = sorted(float(re.search(r"histogram_quantile\(([\d.]+)", e)[1]) for e in latency)
    assert quantiles == [0.5, 0.95, 0.99]
    assert all(f"{prefix}{metrics.LATENCY_SECONDS}_bucket" in e for e in latency)

    savings = _panel(dashboard, "Cost savings")
    assert savings["type"] == "gauge"
    assert f"{prefix}{metrics.COST_SAVINGS_USD}" in _exprs(savings)[0]

    heat = _panel(dashboard, "Success rate by domain and hour")
    assert heat["type"] == "heatmap" and heat["targets"][0]["interval"] == "1h"
    expr = _exprs(heat)[0]
    assert f"{prefix}{metrics.REQUESTS_TOTAL}[1h]" in expr
    assert f"{prefix}{metrics.FAILURES_TOTAL}[1h]" in expr and "by (domain)" in expr


def test_every_exported_metric_appears_on_the_dashboard(dashboard):
    text = " ".join(e for p in dashboard["panels"] for e in _exprs(p))
    for name in metrics.METRIC_NAMES:
        assert f"{metrics.EXPORT_PREFIX}{name}" in text, name
    # every referenced qlp metric is one the app defines
    referenced = set(re.findall(r"ray_(qlp_[a-z_]+?)(?:_bucket|_count|_sum)?\b", text))
    assert referenced <= set(metrics.METRIC_NAMES)
