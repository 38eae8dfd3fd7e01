"""Wizard steps shared by several pages: check the rows, upload them once per content."""

from __future__ import annotations

import hashlib
from typing import Any

from qlp_ray.ui.logic import to_jsonl
from qlp_ray.ui.session import call, client, wizard_state


def recheck() -> dict[str, Any] | None:
    """Ask the API to check the current rows (``POST /v1/datasets/validate``)."""
    state = wizard_state()
    state["report"] = call(client().validate_dataset, state["rows"]) if state["rows"] else None
    return state["report"]


def uploaded() -> dict[str, Any] | None:
    """The rows as a training file on the cluster (``POST /v1/files``), uploaded again only
    when they changed."""
    state = wizard_state()
    if not state["rows"]:
        return None
    digest = hashlib.sha256(to_jsonl(state["rows"]).encode()).hexdigest()
    if state["upload"] is None or state["upload"].get("digest") != digest:
        answer = call(client().upload_file, state["rows"], "wizard.jsonl")
        state["upload"] = None if answer is None else {**answer, "digest": digest}
    return state["upload"]


__all__ = ["recheck", "uploaded"]
