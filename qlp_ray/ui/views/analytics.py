"""Admin console: per-adapter analytics (requests, p50/p95/p99, success rate, ratings,
savings against the reference model) since the replica started and over time (line charts
of ``GET /v1/admin/analytics/timeseries``, per minute, hour or day), and the A/B
experiments (variants, traffic, Wilson intervals, chi-square p-value, winner, stop)."""

from __future__ import annotations

import streamlit as st

from qlp_ray.ui.logic import TIMESERIES_METRICS, analytics_rows, timeseries_chart
from qlp_ray.ui.session import call, client

st.title("Analytics & experiments")
report = call(client().admin, "GET", "analytics")
if report is not None:
    rows = analytics_rows(report)
    if rows:
        st.dataframe(rows, width="stretch")
        st.bar_chart({r["adapter"]: r["requests"] for r in rows}, x_label="adapter",
                     y_label="requests")  # fmt: skip
    else:
        st.info("No request served since this gateway replica started.")
    total = (report.get("cost") or {}).get("total") or {}
    if total.get("requests"):
        st.caption(f"Cost {total['cost_usd']:.6f} vs {total['reference_cost_usd']:.6f} at "
                   f"{report['cost']['reference_model']}: saved {total['savings_usd']:.6f} "
                   f"{report['cost']['currency']}.")  # fmt: skip

st.header("Over time")
cols = st.columns(2)
bucket = cols[0].radio("Per", ["minute", "hour", "day"], horizontal=True, key="ts_bucket")
picked = cols[1].multiselect("Charts", list(TIMESERIES_METRICS), key="ts_metrics",
                             default=["requests", "p95_ms", "success_rate", "savings_usd"],
                             format_func=TIMESERIES_METRICS.get)  # fmt: skip
points = call(client().admin, "GET", f"analytics/timeseries?bucket={bucket}")
if points is not None:
    data = points["data"]
    if not data:
        st.info(f"No request in the last 60 {bucket}s (the store's request log).")
    else:
        chart_cols = st.columns(2)
        for i, metric in enumerate(picked):
            chart_cols[i % 2].altair_chart(timeseries_chart(data, metric), width="stretch")
        st.caption("Success rate: rated requests with a thumbs up or a rating of 4 or more "
                   "(trusted feedback only: from the key that made the request). "
                   f"Savings in {points['currency']} against "
                   f"{points['reference_model']}.")  # fmt: skip

st.header("Experiments")
listing = call(client().admin, "GET", "experiments")
experiments = (listing or {}).get("data") or []
if not experiments:
    st.info("No experiment defined (POST /v1/admin/experiments).")
    st.stop()
ids = [e["id"] for e in experiments]
chosen = st.selectbox("Experiment", ids)
analysis = call(client().admin, "GET", f"experiments/{chosen}")
if analysis is not None:
    variants = analysis.get("variants") or []
    if variants:
        st.dataframe(variants, width="stretch")
    cols = st.columns(3)
    cols[0].metric("chi-square p", analysis.get("p_value"))
    cols[1].metric("min sample size", analysis.get("min_sample_size"))
    cols[2].metric("winner", analysis.get("winner") or "none yet")
    with st.expander("Full analysis"):
        st.json(analysis)
if st.button("Stop experiment", key="stop_experiment"):
    if call(client().admin, "POST", f"experiments/{chosen}/stop") is not None:
        st.success(f"{chosen} stopped: no new assignments.")
