"""Admin console: the compute devices the hardware scheduler knows and its live
placements — serving's CPU share and every training run, placed or waiting and why
(``GET /v1/admin/devices``; a sentence when no scheduler runs)."""

from __future__ import annotations

import streamlit as st

from qlp_ray.ui.logic import device_rows, placement_rows
from qlp_ray.ui.session import call, client

st.title("Devices & placements")
answer = call(client().admin, "GET", "devices")
if answer is None:
    st.stop()
st.caption(f"From the qlp-scheduler actor (namespace {answer['namespace']}).")
st.header("Devices")
rows = device_rows(answer["devices"])
if rows:
    st.dataframe(rows, width="stretch")
else:
    st.info("The scheduler has no device registered yet.")
st.header("Placements")
placed = placement_rows(answer["placements"])
if placed:
    st.dataframe(placed, width="stretch")
else:
    st.info("No placements: nothing is served through the scheduler or training.")
