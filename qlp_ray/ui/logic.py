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


def review_table(
    rows: list[dict[str, Any]],
    report: dict[str, Any] | None,
    fields: tuple[str, ...] | list[str] = CAPSULE_FIELDS,
) -> list[dict]:
    """One display row per row: its ``fields`` and the API's flags and details."""
    checks = {r["index"]: r for r in (report or {}).get("rows", [])}
    table = []
    for i, row in enumerate(rows):
        check = checks.get(i, {})
        details = list(check.get("errors", [])) + list(check.get("too_short", []))
        if check.get("duplicate_of") is not None:
            details.append(f"same as row {check['duplicate_of'] + 1}")
        if check.get("pii"):
            details.append("PII: " + ", ".join(check["pii"]))
        values = {f: str(row.get(f, "")) for f in fields}
        flags = ", ".join(check.get("flags", []))
        table.append({**values, "flags": flags, "details": "; ".join(details)})
    return table


def rows_from_table(
    table: Iterable[dict[str, Any]], fields: tuple[str, ...] | list[str] = CAPSULE_FIELDS
) -> list[dict[str, str]]:
    """Rows back from the edited review table (display columns dropped, blank rows the
    editor adds left out)."""
    out = []
    for row in table:
        values = {f: "" if row.get(f) is None else str(row.get(f)) for f in fields}
        if any(v.strip() for v in values.values()):
            out.append(values)
    return out


def form_row(values: dict[str, str], fields: Iterable[str]) -> dict[str, str]:
    """A row from a form's text inputs (stripped; empty optional ones left out, except a
    capsule's ``input``)."""
    row = {f: str(values.get(f) or "").strip() for f in fields}
    return {k: v for k, v in row.items() if v or k == "input"}


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


def hyperparameters(config: dict[str, Any], spec: dict[str, Any] | None = None) -> dict[str, Any]:
    """The ``hyperparameters`` object of a fine-tuning request from the wizard's config
    (the training method travels beside it: :func:`job_options`), with the extra ones the
    method's API entry lists (``spec["hyperparameters"]``, e.g. PPO's kl_coef) that are set."""
    keys = ("batch_size", "learning_rate", "lora_rank", "lora_alpha", "lora_dropout")
    keys += tuple(o["name"] for o in (spec or {}).get("hyperparameters") or ())
    hp = {k: config[k] for k in keys if config.get(k) is not None}
    if config.get("length") == "steps":
        hp["n_steps"] = int(config["n_steps"])
    else:
        hp["n_epochs"] = float(config["n_epochs"])
    return hp


def option_widget(option: dict[str, Any], current: Any) -> dict[str, Any]:
    """``st.number_input`` arguments of a method's extra hyperparameter (an entry of its
    API ``hyperparameters`` list): bounds (an exclusive bound is the widget's inclusive
    limit; the gateway refuses the bound itself), step, value (``current`` when set and in
    range, else the default; None leaves an optional one empty) and a help text."""
    integer = option["type"] == "integer"
    cast = int if integer else float
    low = option.get("minimum", option.get("exclusiveMinimum"))
    high = option.get("maximum", option.get("exclusiveMaximum"))
    value = option["default"] if current is None and not option["nullable"] else current
    if value is not None and (
        (low is not None and value < low) or (high is not None and value > high)
    ):
        value = option["default"]
    limits = []
    if low is not None:
        limits.append(f"{'>' if 'exclusiveMinimum' in option else '≥'} {low:g}")
    if high is not None:
        limits.append(f"{'<' if 'exclusiveMaximum' in option else '≤'} {high:g}")
    default = "none" if option["default"] is None else f"{option['default']:g}"
    return {
        "min_value": None if low is None else cast(low),
        "max_value": None if high is None else cast(high),
        "value": None if value is None else cast(value),
        "step": 1 if integer else 0.01,
        "format": "%d" if integer else "%.3f",
        "help": f"{option['description']} Default {default}"
        + (f"; {', '.join(limits)}." if limits else "."),
    }


def job_options(config: dict[str, Any], spec: dict[str, Any] | None) -> dict[str, str]:
    """``method`` and the options the method takes (``reward``, ``teacher``, ``parent``)
    of a fine-tuning request, from the wizard's config and the method's API entry."""
    out = {"method": str(config.get("method") or "sft")}
    spec = spec or {}
    for option, applies in (("reward", spec.get("needs_reward")),
                            ("teacher", spec.get("needs_teacher")),
                            ("parent", spec.get("accepts_parent"))):  # fmt: skip
        value = str(config.get(option) or "").strip()
        if applies and value:
            out[option] = value
    return out


def missing_options(config: dict[str, Any], spec: dict[str, Any]) -> list[str]:
    """Sentences for the options ``spec`` needs that the config lacks."""
    out = []
    if spec.get("needs_reward") and not str(config.get("reward") or "").strip():
        out.append(f"{spec['name']} needs a reward (e.g. keyword:deploy,docker or "
                   "reward-model:<id>).")  # fmt: skip
    if spec.get("needs_teacher") and not str(config.get("teacher") or "").strip():
        out.append(f"{spec['name']} needs a teacher: an adapter id[@version] or 'base'.")
    return out


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


TIMESERIES_METRICS = {
    "requests": "requests",
    "p50_ms": "p50 latency (ms)",
    "p95_ms": "p95 latency (ms)",
    "p99_ms": "p99 latency (ms)",
    "success_rate": "success rate (rated requests)",
    "mean_rating": "mean rating",
    "savings_usd": "cost savings",
}


def timeseries_frame(points: list[dict[str, Any]], metric: str) -> Any:
    """A long pandas frame (time, adapter, value) of one metric of
    ``GET /v1/admin/analytics/timeseries`` (buckets without a value left out)."""
    import pandas as pd

    rows = [{"time": pd.Timestamp(p["t"], unit="s", tz="UTC"), "adapter": p["adapter"],
             "value": p[metric]} for p in points if p.get(metric) is not None]  # fmt: skip
    return pd.DataFrame(rows, columns=["time", "adapter", "value"])


def timeseries_chart(points: list[dict[str, Any]], metric: str) -> Any:
    """An Altair line chart (points marked) of one metric per adapter over time."""
    import altair as alt

    title = TIMESERIES_METRICS.get(metric, metric)
    return (
        alt.Chart(timeseries_frame(points, metric), title=title)
        .mark_line(point=True)
        .encode(
            x=alt.X("time:T", title=None),
            y=alt.Y("value:Q", title=title),
            color=alt.Color("adapter:N"),
            tooltip=["adapter", "time", "value"],
        )  # fmt: skip
        .properties(height=220)
    )


def confusion_frame(evaluation: dict[str, Any]) -> Any:
    """Long frame (labelled, routed, count) of ``POST /v1/admin/routes/evaluate``."""
    import pandas as pd

    rows = [{"labelled": label, "routed": col, "count": count}
            for label, counts in zip(evaluation["labels"], evaluation["matrix"], strict=True)
            for col, count in zip(evaluation["columns"], counts, strict=True)]  # fmt: skip
    return pd.DataFrame(rows, columns=["labelled", "routed", "count"])


def confusion_chart(evaluation: dict[str, Any]) -> Any:
    """A heat map with the counts written in its cells."""
    import altair as alt

    frame = confusion_frame(evaluation)
    base = alt.Chart(frame).encode(
        x=alt.X("routed:N", sort=evaluation["columns"], title="routed to"),
        y=alt.Y("labelled:N", sort=evaluation["labels"], title="labelled"),
    )
    cells = base.mark_rect().encode(color=alt.Color("count:Q", scale=alt.Scale(scheme="blues")))
    text = base.mark_text().encode(text="count:Q")
    return (cells + text).properties(height=120 + 50 * len(evaluation["labels"]))


def routing_rows(table: dict[str, Any]) -> list[dict[str, Any]]:
    """The routing table as rows: routable adapters, then skipped ones with the reason."""
    rows = [{"adapter": a, "domain": e.get("domain"), "version": e.get("version"),
             "routable": "yes", "reason": ""}
            for a, e in sorted((table.get("adapters") or {}).items())]  # fmt: skip
    skipped = sorted((table.get("skipped") or {}).items())
    rows += [{"adapter": a, "domain": None, "version": None, "routable": "no",
              "reason": str(why)} for a, why in skipped]  # fmt: skip
    return rows


def device_rows(devices: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One display row per device of ``GET /v1/admin/devices``."""
    out = []
    for d in devices:
        util = d.get("utilization")
        out.append({
            "device": d.get("id"), "node": str(d.get("node_id") or "")[:12],
            "class": d.get("device_class"), "backend": d.get("backend"),
            "cores": d.get("cores"), "alive": d.get("alive"),
            "utilization": None if util is None else f"{100 * util:.0f}%",
            "queue": d.get("queue"), "in flight": d.get("inflight"),
            "description": d.get("description"),
        })  # fmt: skip
    return out


def placement_rows(placements: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """One display row per live placement: serving's CPU share or a training run's workers."""
    out = []
    for run_id, p in sorted(placements.items()):
        if p.get("workload") == "serve":
            res = ", ".join(f"{k} {v:g} CPU" for k, v in (p.get("cpus") or {}).items())
        else:
            res = (f"{p.get('workers')}/{p.get('requested_workers')} x "
                   f"{p.get('cpus_per_worker')} CPU")  # fmt: skip
        out.append({"id": run_id, "workload": p.get("workload"), "state": p.get("state"),
                    "resources": res, "reason": p.get("reason") or ""})  # fmt: skip
    return out


__all__ = [
    "CAPSULE_FIELDS",
    "TIMESERIES_METRICS",
    "confusion_chart",
    "confusion_frame",
    "device_rows",
    "form_row",
    "job_options",
    "missing_options",
    "option_widget",
    "placement_rows",
    "routing_rows",
    "timeseries_chart",
    "timeseries_frame",
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
