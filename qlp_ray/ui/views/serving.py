"""Admin console: the router's live routing table, the compositor's composition cache,
and the audit log (signing, verification, promotions, rollbacks, improve decisions)."""

from __future__ import annotations

import streamlit as st

from qlp_ray.ui.session import call, client

st.title("Router, cache & audit")
st.header("Routing table")
table = call(client().admin, "GET", "routes")
if table is not None:
    st.caption(f"mode {table.get('mode')}, threshold {table.get('threshold')}, fallback "
               f"{table.get('fallback_target')}")  # fmt: skip
    st.json(table, expanded=False)
    if st.button("Rebuild from the registry", key="refresh_routes"):
        if call(client().admin, "POST", "routes/refresh") is not None:
            st.success("Routing table rebuilt.")

st.header("Composition cache")
cache = call(client().admin, "GET", "cache")
if cache is not None:
    st.json(cache, expanded=False)

st.header("Audit log")
events = call(client().admin, "GET", "audit")
if events is not None:
    rows = [{"id": e["id"], "kind": e["kind"], "adapter": e.get("adapter_id"),
             "version": e.get("version"), "actor": e.get("actor"),
             "details": e.get("payload")} for e in reversed(events["data"])]  # fmt: skip
    if rows:
        st.dataframe(rows, width="stretch")
    else:
        st.info("No audit event yet.")
