"""Wizard step 3: review the configuration and a sample of the dataset, then one click
submits the fine-tuning job (``POST /v1/fine-tuning/jobs`` with the method, its reward,
teacher or parent and its own hyperparameters, e.g. PPO's kl_coef)."""

from __future__ import annotations

import streamlit as st

from qlp_ray.ui.logic import hyperparameters, job_options, missing_options
from qlp_ray.ui.session import call, client, wizard_state
from qlp_ray.ui.wizard import method_spec, uploaded

state = wizard_state()
st.title("Step 3 of 4 · Launch")
config, report = state["config"], state["report"]
if not state["rows"] or not report or not report["enough"] or not config.get("model"):
    st.warning("Finish the dataset (step 1) and the configuration (step 2) first.")
    st.stop()

spec = method_spec()
if spec is None:
    st.stop()
options = job_options(config, spec)
st.subheader("Configuration")
hp = hyperparameters(config, spec)  # with the method's own (PPO: kl_coef, ...)
st.json({"model": config["model"], **options, "hyperparameters": hp})
problems = missing_options(config, spec)
for problem in problems:
    st.warning(f"{problem} Set it in step 2.")
st.subheader("Dataset")
st.write(f"{report['valid']} valid rows of {report['total']}; domains {report['domains']}.")
st.dataframe(state["rows"][:5], width="stretch")

if st.button("Launch training", type="primary", key="launch_button", disabled=bool(problems)):
    upload = uploaded()
    if upload is not None:
        job = call(client().create_fine_tuning_job, config["model"], upload["path"],
                   options=options, **hp)  # fmt: skip
        if job is not None:
            state["job_id"] = job["id"]
            st.success(f"Job {job['id']} submitted: follow it in 4. Monitor.")
