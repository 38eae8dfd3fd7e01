"""Wizard step 1: build the training set in the data shape the chosen method needs —
instruction capsules (SFT, AdaLoRA, QLoRA, distill), preference pairs (DPO, reward) or
prompts (PPO, GRPO, RLOO), from ``GET /v1/fine-tuning/methods`` — a form per example, a
review table with the API's quality flags (invalid, duplicate, too short, PII), JSONL
import and export."""

from __future__ import annotations

import streamlit as st

from qlp_ray.core.config import DOMAINS
from qlp_ray.ui.logic import (
    form_row,
    invalid_rows,
    parse_jsonl,
    review_table,
    rows_from_table,
    to_jsonl,
)
from qlp_ray.ui.session import wizard_state
from qlp_ray.ui.wizard import method_spec, methods, recheck

LABELS = {"instruction": "Instruction", "input": "Input (optional)", "output": "Output",
          "prompt": "Prompt", "chosen": "Chosen answer (the better one)",
          "rejected": "Rejected answer (the worse one)"}  # fmt: skip

state = wizard_state()
st.title("Step 1 of 4 · Dataset")
table = methods()
if table is None:
    st.stop()
names = list(table)
current = method_spec()["name"]
chosen = st.selectbox(
    "Training method (decides the rows' shape)", names, index=names.index(current),
    format_func=lambda m: f"{m} — {table[m]['summary']}", key="dataset_method",
)  # fmt: skip
if chosen != state["config"].get("method"):
    state["config"] = {**state["config"], "method": chosen}
    recheck()  # the same rows, checked in the new shape
spec = table[chosen]
fields = spec["fields"]
st.caption(f"Rows for {chosen}: {spec['data']} ({spec['data_shape']}).")

with st.form("add_example", clear_on_submit=True):
    values = {}
    for f in fields:
        if f == "domain":
            optional = spec["data_shape"] != "instructions"
            options = ["", *DOMAINS] if optional else list(DOMAINS)
            label = "Domain (optional)" if optional else "Domain"
            values[f] = st.selectbox(label, options, key="form_domain")
        else:
            values[f] = st.text_area(LABELS.get(f, f), key=f"form_{f}")
    if st.form_submit_button("Add example"):
        state["rows"] = [*state["rows"], form_row(values, fields)]
        recheck()

with st.expander("Import / export JSONL"):
    upload = st.file_uploader("Import rows (.jsonl)", type=["jsonl"], key="import_file")
    pasted = st.text_area("…or paste JSONL", key="import_text")
    if st.button("Import", key="import_button"):
        text = upload.getvalue().decode("utf-8") if upload is not None else pasted
        rows, problems = parse_jsonl(text)
        for problem in problems:
            st.error(f"Not imported: {problem}")
        if rows:
            state["rows"] = [*state["rows"], *rows]
            st.success(f"Imported {len(rows)} rows.")
            recheck()
    st.download_button("Export JSONL", to_jsonl(state["rows"]), file_name="dataset.jsonl",
                       mime="application/jsonl", disabled=not state["rows"])  # fmt: skip

report = state["report"]
if not state["rows"]:
    st.info("No examples yet: add one with the form or import a JSONL file.")
    st.stop()

valid = report["valid"] if report else 0
minimum = report["min_records"] if report else None
recommended = report["recommended_records"] if report else None
cols = st.columns(4)
cols[0].metric("Rows", len(state["rows"]))
cols[1].metric("Valid rows", valid)
cols[2].metric("Trainer minimum", minimum if minimum is not None else "?")
cols[3].metric("Recommended", recommended if recommended is not None else "?")
if report:
    counts = report["flag_counts"]
    if not report["enough"]:
        st.warning(f"{valid} valid rows: the trainer needs at least {minimum}.")
    elif valid < recommended:
        st.info(f"{valid} valid rows: enough to train; {recommended}+ give a useful adapter.")
    st.caption(f"Flags — duplicate: {counts['duplicate']}, too short: {counts['too_short']}, "
               f"PII: {counts['pii']}, invalid: {counts['invalid']}")  # fmt: skip
    for message in invalid_rows(report):
        st.error(f"Invalid row — {message}")

st.subheader("Review")
edited = st.data_editor(
    review_table(state["rows"], report, fields),
    num_rows="dynamic",
    disabled=["flags", "details"],
    key="review",
    width="stretch",
)
if st.button("Save edits", key="save_edits"):
    state["rows"] = rows_from_table(edited, fields)
    recheck()
    st.rerun()

delete_cols = st.columns([1, 3])
row_no = delete_cols[0].number_input("Row", min_value=1, max_value=len(state["rows"]), step=1,
                                     key="delete_row")  # fmt: skip
if delete_cols[1].button("Delete row", key="delete_button"):
    state["rows"] = [r for i, r in enumerate(state["rows"]) if i != int(row_no) - 1]
    recheck()
    st.rerun()
