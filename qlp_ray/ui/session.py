"""The UI's connection to the platform: gateway URL and API key (sidebar, else the
``QLP_UI_GATEWAY_URL`` / ``QLP_UI_API_KEY`` environment ``qlp ui`` sets), one
:class:`~qlp_ray.client.Client` per pair, and :func:`call`, which turns a client error into a
message on the page instead of a stack trace.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import streamlit as st

from qlp_ray.client import Client
from qlp_ray.core.errors import QLPError
from qlp_ray.ui import KEY_ENV, URL_ENV
from qlp_ray.ui.logic import friendly_error

logger = logging.getLogger(__name__)
T = TypeVar("T")

DEFAULT_URL = "http://127.0.0.1:8000"
DATA_DIRS_ENV = "QLP_UI_DATA_DIRS"
MAX_DATA_FILES = 200
TIMEOUT_S = 60.0


def gateway_url() -> str:
    if "gateway_url" not in st.session_state:
        st.session_state["gateway_url"] = os.environ.get(URL_ENV, DEFAULT_URL)
    return str(st.session_state["gateway_url"]).rstrip("/")


def api_key() -> str:
    if "api_key" not in st.session_state:
        st.session_state["api_key"] = os.environ.get(KEY_ENV, "")
    return str(st.session_state["api_key"])


def client() -> Client:
    """The client of the current URL and key (one per pair, kept in the session)."""
    key = (gateway_url(), api_key())
    held = st.session_state.get("_client")
    if held is None or held[0] != key:
        if held is not None:
            held[1].close()
        held = (key, Client(key[0], api_key=key[1] or None, timeout=TIMEOUT_S))
        st.session_state["_client"] = held
    return held[1]


def call(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T | None:
    """``fn(*args, **kwargs)``; on a client error, an error box on the page and None."""
    try:
        return fn(*args, **kwargs)
    except QLPError as exc:
        logger.info("UI call %s failed: %s", getattr(fn, "__name__", fn), exc)
        st.error(friendly_error(exc, gateway_url()))
        return None


def sidebar() -> None:
    """Gateway URL and API key inputs (the key is never shown)."""
    with st.sidebar:
        gateway_url(), api_key()  # initialised from the environment on the first run
        st.text_input("Gateway URL", key="gateway_url")
        st.text_input("API key (admin)", key="api_key", type="password")


def wizard_state() -> dict[str, Any]:
    """The wizard's rows, report, config, upload and job, kept across pages."""
    defaults: dict[str, Any] = {"rows": [], "report": None, "config": {}, "upload": None,
                                "job_id": None, "estimate": None}  # fmt: skip
    for k, v in defaults.items():
        st.session_state.setdefault(k, v)
    return st.session_state  # type: ignore[return-value]


def data_dirs() -> list[Path]:
    """Where the UI offers labelled JSONL files from: ``QLP_UI_DATA_DIRS`` (``os.pathsep``
    separated), else ``../shared/data`` beside the checkout and the bundled samples."""
    from qlp_ray.core.config import REPO_ROOT

    raw = os.environ.get(DATA_DIRS_ENV)
    if raw:
        return [Path(p).expanduser() for p in raw.split(os.pathsep) if p]
    return [REPO_ROOT.parent / "shared" / "data", REPO_ROOT / "qlp_ray" / "data" / "samples"]


def data_files() -> dict[str, Path]:
    """The ``.jsonl`` files of :func:`data_dirs`, by a short label (at most 200)."""
    out: dict[str, Path] = {}
    for d in data_dirs():
        if d.is_dir():
            for path in sorted(d.rglob("*.jsonl")):
                out[f"{d.name}/{path.relative_to(d)}"] = path
                if len(out) >= MAX_DATA_FILES:
                    return out
    return out


__all__ = ["api_key", "call", "client", "data_files", "gateway_url", "sidebar", "wizard_state"]
