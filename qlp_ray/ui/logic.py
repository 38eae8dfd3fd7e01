"""The web UI's plain helpers (no Streamlit, no HTTP): what to say for an error, JSONL in
and out, the tables and charts the pages draw from API answers.

Every decision about the platform (is a row valid, how many steps, what did the job report)
is the API's; these functions only reshape its answers for display.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from typing import Any

from qlp_ray.core.errors import (
    AdapterNotFound,
    AuthenticationError,
    InvalidRequest,
    NotFound,
    Overloaded,
    PermissionDenied,
    QLPError,
)

CAPSULE_FIELDS = ("instruction", "input", "output", "domain")
FINISHED = ("succeeded", "failed", "cancelled")


def friendly_error(exc: Exception, gateway_url: str) -> str:
    """One sentence for a person, from a client error (never a stack trace)."""
    message = getattr(exc, "message", None) or str(exc)
    if isinstance(exc, AuthenticationError):
        return (
            f"The gateway at {gateway_url} refused the API key (401). Enter the admin key "
            "in the sidebar (serve.admin_key of the deployment)."
        )
    if isinstance(exc, PermissionDenied):
        return (
            "This API key may not use admin routes (403): training and the console need "
            "the admin key."
        )
    if isinstance(exc, InvalidRequest):
        return f"The gateway refused the request: {message}"
    if isinstance(exc, AdapterNotFound | NotFound):
        return f"Not found: {message}"
    if isinstance(exc, Overloaded):
        return f"The platform cannot do this right now (503): {message}"
    if isinstance(exc, QLPError) and message.startswith("cannot reach"):
        return (
            f"The gateway at {gateway_url} is not reachable. Is `qlp serve` running, and is "
            "the URL in the sidebar right?"
        )
    return f"The gateway answered with an error: {message}"


def capsule_row(instruction: str, input_: str, output: str, domain: str) -> dict[str, str]:
    """A capsule row from the form's fields (stripped; ``input`` may be empty)."""
    return {"instruction": instruction.strip(), "input": input_.strip(),
            "output": output.strip(), "domain": domain.strip()}  # fmt: skip


def parse_jsonl(text: str) -> tuple[list[Any], list[str]]:
    """Rows of a JSONL text and one message per line that is not a JSON object."""
    rows, problems = [], []
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            problems.append(f"line {lineno}: not JSON ({exc.msg})")
            continue
        if not isinstance(row, dict):
            problems.append(f"line {lineno}: expected a JSON object, got {type(row).__name__}")
            continue
        rows.append(row)
    return rows, problems


def to_jsonl(rows: Iterable[dict[str, Any]]) -> str:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)


def review_table(rows: list[dict[str, Any]], report: dict[str, Any] | None) -> list[dict]:
    """One display row per capsule: its fields and the API's flags and details."""
    checks = {r["index"]: r for r in (report or {}).get("rows", [])}
    table = []
    for i, row in enumerate(rows):
        check = checks.get(i, {})
        details = list(check.get("errors", [])) + list(check.get("too_short", []))
        if check.get("duplicate_of") is not None:
            details.append(f"same as row {check['duplicate_of'] + 1}")
        if check.get("pii"):
            details.append("PII: " + ", ".join(check["pii"]))
        fields = {f: str(row.get(f, "")) for f in CAPSULE_FIELDS}
        flags = ", ".join(check.get("flags", []))
        table.append({**fields, "flags": flags, "details": "; ".join(details)})
    return table


def rows_from_table(table: Iterable[dict[str, Any]]) -> list[dict[str, str]]:
    """Capsule rows back from the edited review table (display columns dropped, blank
    rows the editor adds left out)."""
    out = []
    for row in table:
        fields = {f: "" if row.get(f) is None else str(row.get(f)) for f in CAPSULE_FIELDS}
        if any(v.strip() for v in fields.values()):
            out.append(fields)
    return out


def invalid_rows(report: dict[str, Any] | None) -> list[str]:
    """ "Row N: why" for every row the API called invalid."""
    return [
        f"Row {r['index'] + 1}: {'; '.join(r['errors'])}"
        for r in (report or {}).get("rows", [])
        if not r.get("valid", True)
    ]


def main_domain(report: dict[str, Any] | None) -> str | None:
    """The domain most valid rows belong to (None without valid rows)."""
    domains = (report or {}).get("domains") or {}
    return max(sorted(domains), key=domains.get) if domains else None


def hyperparameters(config: dict[str, Any]) -> dict[str, Any]:
    """The ``hyperparameters`` object of a fine-tuning request from the wizard's config."""
    keys = ("method", "batch_size", "learning_rate", "lora_rank", "lora_alpha", "lora_dropout")
    hp = {k: config[k] for k in keys if config.get(k) is not None}
    if config.get("length") == "steps":
        hp["n_steps"] = int(config["n_steps"])
    else:
        hp["n_epochs"] = float(config["n_epochs"])
    return hp


def loss_frame(series: dict[str, list[dict[str, float]]]) -> Any:
    """A long pandas frame (step, loss, split) of the training and held-out points."""
    import pandas as pd

    names = {"train": "training loss", "heldout": "held-out loss"}
    rows = [{"step": p["step"], "loss": p["loss"], "split": names[split]}
            for split in names for p in series.get(split) or []]  # fmt: skip
    return pd.DataFrame(rows, columns=["step", "loss", "split"])


def loss_chart(series: dict[str, list[dict[str, float]]]) -> Any:
    """An Altair line chart with points (the held-out loss has only a few) per split."""
    import altair as alt

    frame = loss_frame(series)
    return (
        alt.Chart(frame)
        .mark_line(point=True)
        .encode(
            x=alt.X("step:Q", title="step"),
            y=alt.Y("loss:Q", title="loss"),
            color=alt.Color("split:N", title=None),
            tooltip=["split", "step", "loss"],
        )  # fmt: skip
        .properties(height=320)
    )


_LOG_RECORD = re.compile(r"^(\d{4}-\d\d-\d\d|\(|\[|INFO|WARNING|DEBUG)")


def failure_reason(job: dict[str, Any]) -> str:
    """Why a job failed, in a few lines: the exit status from its message, and the ``qlp``
    command's ``error:`` paragraph from its log (a wrapped line joined again), else the
    log's last line naming an error."""
    message = str(job.get("message") or "").strip()
    status = message.splitlines()[0].split(", last available logs")[0] if message else ""
    lines = str(job.get("logs_tail") or "").splitlines()
    starts = [i for i, ln in enumerate(lines) if ln.lstrip().startswith("error:")]
    reason = ""
    if starts:
        paragraph = []
        for ln in lines[starts[-1] :]:
            if paragraph and (not ln.strip() or _LOG_RECORD.match(ln.strip())):
                break
            paragraph.append(ln.strip())
        reason = " ".join(paragraph)
    else:
        named = [ln.strip() for ln in lines if "error" in ln.lower()]
        reason = named[-1] if named else ""
    text = " — ".join(p for p in (status, reason) if p)
    return text[:800] or "the job failed without a message; see `ray job logs`"


def adapter_rows(adapters: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One display row per adapter version: id, version, current, signed, lineage."""
    out = []
    for entry in adapters:
        for v in entry["versions"]:
            metrics = v.get("metrics") or {}
            before, after = metrics.get("eval_loss_before"), metrics.get("eval_loss_after")
            out.append({
                "adapter": entry["id"], "version": v["version"], "current": v["current"],
                "signed": "yes" if v["signed"] else f"NO: {v.get('problem') or 'unsigned'}",
                "domain": v.get("domain"), "method": v.get("method"),
                "created": v.get("created_at"),
                "held-out loss": f"{before:.3f} → {after:.3f}" if before and after else "",
                "data": (v.get("data_hash") or "")[:12],
                "run": (v.get("run") or {}).get("run_name", ""),
            })  # fmt: skip
    return out


def analytics_rows(report: dict[str, Any]) -> list[dict[str, Any]]:
    """One display row per adapter of ``GET /v1/admin/analytics``."""
    cost = (report.get("cost") or {}).get("by_model") or {}
    out = []
    for adapter, s in sorted((report.get("adapters") or {}).items()):
        lat = s.get("latency_ms") or {}
        out.append({
            "adapter": adapter, "requests": s.get("requests"),
            "success rate": s.get("success_rate"), "p50 ms": lat.get("p50"),
            "p95 ms": lat.get("p95"), "p99 ms": lat.get("p99"),
            "mean rating": s.get("mean_rating"), "thumbs up": s.get("thumbs_up"),
            "thumbs down": s.get("thumbs_down"),
            "savings": (cost.get(adapter) or {}).get("savings_usd"),
        })  # fmt: skip
    return out


__all__ = [
    "CAPSULE_FIELDS",
    "FINISHED",
    "adapter_rows",
    "analytics_rows",
    "capsule_row",
    "failure_reason",
    "friendly_error",
    "hyperparameters",
    "invalid_rows",
    "loss_chart",
    "loss_frame",
    "main_domain",
    "parse_jsonl",
    "review_table",
    "rows_from_table",
    "to_jsonl",
]
