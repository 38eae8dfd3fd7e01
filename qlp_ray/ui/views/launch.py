"""Wizard step 3: review the configuration and a sample of the dataset, then one click
submits the fine-tuning job (``POST /v1/fine-tuning/jobs``)."""

from __future__ import annotations

import streamlit as st

from qlp_ray.ui.logic import hyperparameters
from qlp_ray.ui.session import call, client, wizard_state
from qlp_ray.ui.wizard import uploaded

state = wizard_state()
st.title("Step 3 of 4 · Launch")
config, report = state["config"], state["report"]
if not state["rows"] or not report or not report["enough"] or not config.get("model"):
    st.warning("Finish the dataset (step 1) and the configuration (step 2) first.")
    st.stop()

st.subheader("Configuration")
st.json({"model": config["model"], "hyperparameters": hyperparameters(config)})
st.subheader("Dataset")
st.write(f"{report['valid']} valid rows of {report['total']}; domains {report['domains']}.")
st.dataframe(state["rows"][:5], width="stretch")

if st.button("Launch training", type="primary", key="launch_button"):
    upload = uploaded()
    if upload is not None:
        job = call(client().create_fine_tuning_job, config["model"], upload["path"],
                   **hyperparameters(config))  # fmt: skip
        if job is not None:
            state["job_id"] = job["id"]
            st.success(f"Job {job['id']} submitted: follow it in 4. Monitor.")
