"""Wizard steps shared by several pages: check the rows, upload them once per content."""

from __future__ import annotations

import hashlib
from typing import Any

from qlp_ray.ui.logic import to_jsonl
from qlp_ray.ui.session import call, client, wizard_state


def recheck() -> dict[str, Any] | None:
    """Ask the API to check the current rows (``POST /v1/datasets/validate``)."""
    state = wizard_state()
    rows, method = state["rows"], state["config"].get("method")
    state["report"] = call(client().validate_dataset, rows, method) if rows else None
    return state["report"]


def uploaded() -> dict[str, Any] | None:
    """The rows as a training file on the cluster (``POST /v1/files``), uploaded again only
    when they changed."""
    state = wizard_state()
    if not state["rows"]:
        return None
    shape = str(state["config"].get("method"))
    digest = hashlib.sha256((shape + to_jsonl(state["rows"])).encode()).hexdigest()
    if state["upload"] is None or state["upload"].get("digest") != digest:
        method = state["config"].get("method")
        answer = call(client().upload_file, state["rows"], "wizard.jsonl", method)
        state["upload"] = None if answer is None else {**answer, "digest": digest}
    return state["upload"]


def methods() -> dict[str, dict[str, Any]] | None:
    """The training methods the API offers (``GET /v1/fine-tuning/methods``), by name;
    read once per session."""
    state = wizard_state()
    if state.get("methods") is None:
        answer = call(client().fine_tuning_methods)
        if answer is None:
            return None
        state["methods"] = {m["name"]: m for m in answer["data"]}
        state["gpu"] = answer["gpu"]
    return state["methods"]


def method_spec() -> dict[str, Any] | None:
    """The API's entry of the wizard's chosen method (default sft)."""
    table = methods()
    if table is None:
        return None
    state = wizard_state()
    state["config"].setdefault("method", "sft")
    return table.get(state["config"]["method"]) or table["sft"]


__all__ = ["method_spec", "methods", "recheck", "uploaded"]
