"""Admin console: the improve loop's decisions from the audit log — each training,
evaluation, experiment and promote / keep / roll-back decision with the numbers that made
it (``GET /v1/admin/improve/decisions``)."""

from __future__ import annotations

import streamlit as st

from qlp_ray.core.config import DOMAINS
from qlp_ray.ui.session import call, client

st.title("Improve decisions")
domain = st.selectbox("Domain", ["all", *DOMAINS], key="decisions_domain")
query = "improve/decisions?last=500" + ("" if domain == "all" else f"&domain={domain}")
answer = call(client().admin, "GET", query)
if answer is None:
    st.stop()
events = list(reversed(answer["data"]))
if not events:
    st.info("The improve loop has decided nothing yet (`qlp improve --once`).")
    st.stop()
decisions = [e for e in events if e["kind"] == "decision"]
cols = st.columns(3)
cols[0].metric("Decisions", len(decisions))
cols[1].metric("Promoted", sum(e["outcome"] == "promote" for e in decisions))
cols[2].metric("Kept / rolled back", sum(e["outcome"] in ("keep", "rollback") for e in decisions))
table = [{k: e[k] for k in ("id", "time", "kind", "domain", "version", "outcome", "method",
                            "reason")} for e in events]  # fmt: skip
st.dataframe(table, width="stretch")
chosen = st.selectbox("Numbers of event", [e["id"] for e in events], key="decision_event")
st.json(next(e for e in events if e["id"] == chosen)["numbers"])
