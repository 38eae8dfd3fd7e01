"""Wizard step 4: follow a fine-tuning job — status, progress, the training and held-out
loss curve from its reported metrics, cancel, the job history, and on success the signed
adapter version it registered."""

from __future__ import annotations

import streamlit as st

from qlp_ray.ui.logic import FINISHED, failure_reason, loss_chart, loss_frame
from qlp_ray.ui.session import call, client, wizard_state

REFRESH_S = 2.0

state = wizard_state()
st.title("Step 4 of 4 · Monitor")

jobs = call(client().fine_tuning_jobs)
if jobs is None:
    st.stop()
ids = [j["id"] for j in sorted(jobs, key=lambda j: j["id"], reverse=True)]
if state["job_id"] and state["job_id"] not in ids:
    ids.insert(0, state["job_id"])  # just submitted: the list may lag
if not ids:
    st.info("No fine-tuning jobs yet: launch one in step 3.")
    st.stop()
job_id = st.selectbox("Job", ids, index=ids.index(state["job_id"]) if state["job_id"] else 0)
state["job_id"] = job_id


def show_job(job_id: str) -> bool:
    """Draw the job; True once it has finished (it is then drawn the same way again)."""
    job = call(client().fine_tuning_job, job_id)
    metrics = call(client().fine_tuning_metrics, job_id) if job else None
    if job is None or metrics is None:
        return True
    status = job["status"]
    st.markdown(f"**Status:** `{status}`")
    progress = metrics["progress"]
    if progress["fraction"] is not None:
        st.progress(progress["fraction"],
                    text=f"step {progress['step']} of {progress['total_steps']}")  # fmt: skip
    frame = loss_frame(metrics["series"])
    st.subheader("Loss curve")
    if frame.empty:
        st.caption("No loss reported yet.")
    else:
        st.altair_chart(loss_chart(metrics["series"]), width="stretch")
    if status == "failed":
        st.error(f"The job failed: {failure_reason(job)}")
    elif status == "cancelled":
        st.warning("The job was cancelled.")
    elif status == "succeeded":
        adapter = metrics["adapter"]
        if adapter is None:
            st.warning("The job succeeded but no registered version names its run.")
        else:
            signed = "signed" if adapter["signed"] else f"NOT signed ({adapter['problem']})"
            st.success(f"Registered {adapter['model']} ({signed}); see it under Adapters in "
                       "the admin console.")  # fmt: skip
            st.markdown(f"Adapter in the registry: [`{adapter['model']}`](/adapters"
                        f"?adapter={adapter['id']})")  # fmt: skip
    return status in FINISHED


@st.fragment(run_every=REFRESH_S)
def live() -> None:
    """The chosen job and the job history, redrawn every ``REFRESH_S`` seconds."""
    show_job(state["job_id"])
    history = call(client().fine_tuning_jobs)
    if history is not None:
        st.subheader("Job history")
        rows = [{k: j.get(k) for k in ("id", "status", "message")} for j in history]
        st.dataframe(sorted(rows, key=lambda r: r["id"], reverse=True), width="stretch")


if st.button("Cancel job", key="cancel_button"):
    answer = call(client().cancel_fine_tuning_job, job_id)
    if answer is not None:
        st.info("Cancel requested." if answer["cancel_requested"] else "The job had finished.")
live()
