"""Streamlit entry of the qlp web UI: the sidebar connection and the page navigation.

Run with ``qlp ui`` (or ``streamlit run qlp_ray/ui/app.py``). Each page is a script under
``views/`` and a thin view over the HTTP API.
"""

from __future__ import annotations

from pathlib import Path

import streamlit as st

from qlp_ray.ui.session import sidebar

VIEWS = Path(__file__).resolve().parent / "views"

st.set_page_config(page_title="qlp_ray", layout="wide")
PAGES = {
    "Train an adapter": [
        st.Page(VIEWS / "dataset.py", title="1. Dataset", url_path="dataset", default=True),
        st.Page(VIEWS / "configure.py", title="2. Configure", url_path="configure"),
        st.Page(VIEWS / "launch.py", title="3. Launch", url_path="launch"),
        st.Page(VIEWS / "monitor.py", title="4. Monitor", url_path="monitor"),
    ],
    "Admin console": [
        st.Page(VIEWS / "adapters.py", title="Adapters", url_path="adapters"),
        st.Page(VIEWS / "analytics.py", title="Analytics & experiments", url_path="analytics"),
        st.Page(VIEWS / "router.py", title="Router", url_path="router"),
        st.Page(VIEWS / "serving.py", title="Router, cache & audit", url_path="serving"),
        st.Page(VIEWS / "devices.py", title="Devices & placements", url_path="devices"),
        st.Page(VIEWS / "decisions.py", title="Improve decisions", url_path="decisions"),
    ],
}
page = st.navigation(PAGES)
sidebar()
page.run()
