"""Admin console: every adapter with its versions — signed state, the current one,
lineage (method, data hash, held-out loss, run) — verify, promote and roll back."""

from __future__ import annotations

import streamlit as st

from qlp_ray.ui.logic import adapter_rows
from qlp_ray.ui.session import call, client

st.title("Adapters")
answer = call(client().admin, "GET", "adapters")
if answer is None:
    st.stop()
adapters = answer["data"]
if not adapters:
    st.info("The registry holds no adapter yet: train one with the wizard.")
    st.stop()

for a in adapters:
    signed = "all signed" if all(v["signed"] for v in a["versions"]) else "UNSIGNED versions"
    retired = " · retired" if a["retired"] else ""
    st.markdown(f"- **{a['id']}** ({a['domain']}) · current v{a['current_version']} of "
                f"{len(a['versions'])} · {signed}{retired}")  # fmt: skip
st.subheader("Versions and lineage")
st.dataframe(adapter_rows(adapters), width="stretch")

ids = [a["id"] for a in adapters]
wanted = st.query_params.get("adapter")
chosen = st.selectbox("Adapter", ids, index=ids.index(wanted) if wanted in ids else 0)
entry = next(a for a in adapters if a["id"] == chosen)
versions = [v["version"] for v in entry["versions"]]
version = st.selectbox("Version", versions, key="version_choice")
reason = st.text_input("Reason (recorded in the audit log)", key="pointer_reason")
cols = st.columns(3)
if cols[0].button("Verify", key="verify_button"):
    out = call(client().admin, "POST", f"adapters/{chosen}/verify", {"version": version})
    if out is not None:
        st.success(f"{chosen} v{version} verifies: signature, files and base model.")
if cols[1].button("Promote", key="promote_button"):
    out = call(client().admin, "POST", f"adapters/{chosen}/promote",
               {"version": version, "reason": reason})  # fmt: skip
    if out is not None:
        st.success(f"{chosen}: v{version} is current (was v{out['previous_version']}).")
if cols[2].button("Roll back", key="rollback_button"):
    out = call(client().admin, "POST", f"adapters/{chosen}/rollback",
               {"version": version, "reason": reason})  # fmt: skip
    if out is not None:
        st.success(f"{chosen}: rolled back to v{version} (was v{out['previous_version']}).")
