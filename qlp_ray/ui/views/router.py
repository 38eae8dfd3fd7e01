"""Admin console: the router — its live routing table, and its accuracy and confusion
matrix on a labelled file (``POST /v1/admin/routes/evaluate``: the live router routes every
row, the API scores it). The file is an upload or a JSONL file from the UI's data
directories (``QLP_UI_DATA_DIRS``; default ``../shared/data`` beside the checkout and the
bundled samples)."""

from __future__ import annotations

import streamlit as st

from qlp_ray.ui.logic import confusion_chart, parse_jsonl, routing_rows
from qlp_ray.ui.session import call, client, data_files

st.title("Router")
st.header("Live routing table")
table = call(client().admin, "GET", "routes")
if table is not None:
    target = table.get("fallback_target") or {}
    st.caption(f"mode {table.get('mode')} · threshold {table.get('threshold')} · top_k "
               f"{table.get('top_k')} · fallback {target.get('kind')} "
               f"{target.get('model')} · rebuilt {table.get('refreshed_s_ago')} s ago")  # fmt: skip
    rows = routing_rows(table)
    if rows:
        st.dataframe(rows, width="stretch")
    else:
        st.info("No routable adapter: every request goes to the fallback.")
    if st.button("Rebuild from the registry", key="router_refresh"):
        if call(client().admin, "POST", "routes/refresh") is not None:
            st.success("Routing table rebuilt.")

st.header("Accuracy on a labelled file")
st.caption('Rows {"text" (or "instruction"), "domain"}; a row the router sends to the '
           "fallback counts as wrong.")  # fmt: skip
files = data_files()
source = st.radio("Labelled rows from", ["a data directory", "an upload"], horizontal=True,
                  key="router_source")  # fmt: skip
text = None
if source == "an upload":
    upload = st.file_uploader("Labelled JSONL", type=["jsonl"], key="router_upload")
    if upload is not None:
        text = upload.getvalue().decode("utf-8")
elif files:
    chosen = st.selectbox("File", list(files), key="router_file")
    text = files[chosen].read_text(encoding="utf-8")
else:
    st.info("No .jsonl file in the data directories (QLP_UI_DATA_DIRS).")
limit = st.number_input("Rows (at most)", 1, 5000, 500, key="router_limit")
if st.button("Evaluate the live router", key="router_evaluate", disabled=text is None):
    rows, problems = parse_jsonl(text or "")
    for problem in problems:
        st.error(f"Not read: {problem}")
    if rows:
        st.session_state["router_eval"] = call(client().admin, "POST", "routes/evaluate",
                                               {"rows": rows[: int(limit)]})  # fmt: skip
result = st.session_state.get("router_eval")
if result:
    cols = st.columns(4)
    cols[0].metric("Accuracy", f"{result['accuracy']:.1%}")
    cols[1].metric("Macro-F1", f"{result['macro_f1']:.3f}")
    cols[2].metric("Coverage", f"{result['coverage']:.1%}")
    cols[3].metric("Rows", result["n"])
    st.caption(f"{result['fallbacks']} rows went to the fallback; accuracy on the rows at or "
               f"above the threshold ({result['threshold']}): "
               f"{result['accuracy_above_threshold']:.1%}.")  # fmt: skip
    st.altair_chart(confusion_chart(result), width="stretch")
    st.dataframe([{"domain": d, "recall": r} for d, r in result["recall"].items()],
                 width="stretch")  # fmt: skip
