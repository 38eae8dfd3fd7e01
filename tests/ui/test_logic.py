"""The UI's plain helpers: error sentences, JSONL, the review table, hyperparameters."""

from __future__ import annotations

import pytest

from qlp_ray.core.errors import (
    AuthenticationError,
    InvalidRequest,
    Overloaded,
    PermissionDenied,
    QLPError,
)
from qlp_ray.ui.logic import (
    adapter_rows,
    confusion_frame,
    failure_reason,
    form_row,
    friendly_error,
    hyperparameters,
    job_options,
    loss_frame,
    missing_options,
    option_widget,
    parse_jsonl,
    placement_rows,
    review_table,
    routing_rows,
    rows_from_table,
    timeseries_frame,
    to_jsonl,
)

URL = "http://gw:8000"


@pytest.mark.parametrize(
    ("exc", "needle"),
    [
        (QLPError("cannot reach http://gw:8000/health: refused"), "is not reachable"),
        (AuthenticationError("missing or invalid API key"), "refused the API key (401)"),
        (PermissionDenied("not admin"), "may not use admin routes (403)"),
        (InvalidRequest("row 2: output: empty"), "refused the request: row 2: output: empty"),
        (Overloaded("Jobs API unreachable"), "(503): Jobs API unreachable"),
        (QLPError("HTTP 500: boom"), "answered with an error: HTTP 500: boom"),
    ],
)
def test_errors_become_one_sentence(exc, needle):
    text = friendly_error(exc, URL)
    assert needle in text and "Traceback" not in text


def test_jsonl_round_trip_and_bad_lines():
    rows = [{"instruction": "a", "output": "b", "domain": "api"}, {"instruction": "ü"}]
    parsed, problems = parse_jsonl(to_jsonl(rows) + "\n[1, 2]\n{oops\n")
    assert parsed == rows
    assert problems[0] == "line 4: expected a JSON object, got list"
    assert problems[1] == "line 5: not JSON (Expecting property name enclosed in double quotes)"


def test_review_table_merges_flags_and_edits_come_back():
    rows = [{"instruction": "i", "output": "o", "domain": "api"}] * 2
    report = {"rows": [
        {"index": 0, "flags": ["too_short"], "errors": [], "too_short": ["output has 1"],
         "duplicate_of": None, "pii": []},
        {"index": 1, "flags": ["duplicate", "pii"], "errors": [], "too_short": [],
         "duplicate_of": 0, "pii": ["email"]},
    ]}  # fmt: skip
    table = review_table(rows, report)
    assert table[0]["flags"] == "too_short" and table[0]["details"] == "output has 1"
    assert table[1]["details"] == "same as row 1; PII: email"
    table.append({"instruction": None, "input": None, "output": None, "domain": None})
    assert rows_from_table(table) == [{"instruction": "i", "input": "", "output": "o",
                                       "domain": "api"}] * 2  # fmt: skip


def test_hyperparameters_send_epochs_or_steps():
    config = {"method": "lora", "lora_rank": 4, "length": "epochs", "n_epochs": 2, "n_steps": 9}
    assert hyperparameters(config) == {"lora_rank": 4, "n_epochs": 2.0}  # method: beside it
    assert hyperparameters({**config, "length": "steps"})["n_steps"] == 9


def test_a_methods_own_hyperparameters_are_sent_only_when_it_lists_them():
    ppo = {"name": "ppo", "hyperparameters": [{"name": "kl_coef"}, {"name": "kl_target"}]}
    config = {"length": "steps", "n_steps": 3, "kl_coef": 0.1, "kl_target": None}
    assert hyperparameters(config, ppo) == {"n_steps": 3, "kl_coef": 0.1}  # None: not sent
    assert hyperparameters(config, {"name": "grpo"}) == {"n_steps": 3}


def test_option_widget_bounds_default_and_help():
    clip = {"name": "clip_range", "type": "number", "default": 0.2, "nullable": False,
            "description": "PPO ratio clip (epsilon).", "exclusiveMinimum": 0,
            "exclusiveMaximum": 1}  # fmt: skip
    w = option_widget(clip, None)
    assert (w["min_value"], w["max_value"], w["value"], w["step"]) == (0.0, 1.0, 0.2, 0.01)
    assert w["help"] == "PPO ratio clip (epsilon). Default 0.2; > 0, < 1."
    assert option_widget(clip, 0.5)["value"] == 0.5
    assert option_widget(clip, 7.0)["value"] == 0.2  # out of range (an old session): default
    epochs = {"name": "ppo_epochs", "type": "integer", "default": 2, "nullable": False,
              "description": "Passes.", "minimum": 1, "maximum": 64}  # fmt: skip
    w = option_widget(epochs, None)
    assert (w["min_value"], w["max_value"], w["value"], w["step"]) == (1, 64, 2, 1)
    assert all(type(w[k]) is int for k in ("min_value", "max_value", "value", "step"))
    target = {"name": "kl_target", "type": "number", "default": None, "nullable": True,
              "description": "KL target.", "exclusiveMinimum": 0, "maximum": 1000}  # fmt: skip
    assert option_widget(target, None)["value"] is None  # optional: left empty
    assert option_widget(target, None)["help"] == "KL target. Default none; > 0, ≤ 1000."


def test_job_options_send_what_the_method_takes():
    grpo = {"name": "grpo", "needs_reward": True, "needs_teacher": False, "accepts_parent": True}
    config = {"method": "grpo", "reward": " keyword:deploy ", "teacher": "base", "parent": ""}
    assert job_options(config, grpo) == {"method": "grpo", "reward": "keyword:deploy"}
    assert missing_options({"method": "grpo"}, grpo) == [
        "grpo needs a reward (e.g. keyword:deploy,docker or reward-model:<id>)."
    ]
    reward = {"name": "reward", "needs_reward": False, "accepts_parent": False}
    assert job_options({"method": "reward", "parent": "api@1"}, reward) == {"method": "reward"}
    distill = {"name": "distill", "needs_teacher": True}
    assert missing_options({}, distill) == [
        "distill needs a teacher: an adapter id[@version] or 'base'."
    ]


def test_form_row_keeps_a_capsules_empty_input_only():
    assert form_row({"prompt": " p ", "domain": ""}, ["prompt", "domain"]) == {"prompt": "p"}
    capsule = form_row({"instruction": "i", "output": "o"}, ["instruction", "input", "output"])
    assert capsule == {"instruction": "i", "input": "", "output": "o"}


def test_confusion_frame_and_routing_rows():
    evaluation = {"labels": ["api", "devops"], "columns": ["api", "devops", "fallback"],
                  "matrix": [[3, 0, 1], [1, 4, 0]]}  # fmt: skip
    frame = confusion_frame(evaluation)
    assert len(frame) == 6 and frame["count"].sum() == 9
    assert frame.query("labelled == 'api' and routed == 'fallback'")["count"].item() == 1
    rows = routing_rows({"adapters": {"devops": {"domain": "devops", "version": 2}},
                         "skipped": {"api": "no centroid in qlp.json"}})  # fmt: skip
    assert [(r["adapter"], r["routable"], r["reason"]) for r in rows] == [
        ("devops", "yes", ""), ("api", "no", "no centroid in qlp.json")]  # fmt: skip


def test_placement_rows_show_serving_share_and_waiting_runs():
    rows = placement_rows({
        "serve": {"workload": "serve", "state": "placed", "cpus": {"node-a": 1.5}, "reason": ""},
        "train:ftjob-1": {"workload": "train", "state": "waiting", "workers": 0,
                          "requested_workers": 2, "cpus_per_worker": 1.0,
                          "reason": "needs 2 CPU, 1 free"},
    })  # fmt: skip
    assert rows[0]["resources"] == "node-a 1.5 CPU"
    assert rows[1]["resources"] == "0/2 x 1.0 CPU" and rows[1]["reason"] == "needs 2 CPU, 1 free"


def test_timeseries_frame_drops_empty_buckets():
    points = [{"t": 60, "adapter": "api", "requests": 2, "success_rate": None},
              {"t": 120, "adapter": "api", "requests": 1, "success_rate": 1.0}]  # fmt: skip
    assert len(timeseries_frame(points, "requests")) == 2
    frame = timeseries_frame(points, "success_rate")
    assert list(frame["value"]) == [1.0] and str(frame["time"][0]) == "1970-01-01 00:02:00+00:00"


def test_loss_frame_is_long_with_both_splits():
    frame = loss_frame({"train": [{"step": 1, "loss": 2.0}, {"step": 2, "loss": 1.5}],
                        "heldout": [{"step": 0, "loss": 3.0}]})  # fmt: skip
    assert sorted(frame["split"]) == ["held-out loss", "training loss", "training loss"]
    assert loss_frame({"train": [], "heldout": []}).empty


def test_failure_reason_is_the_commands_error_paragraph():
    job = {"message": "Job entrypoint command failed with exit code 1, last available logs "
                      "(truncated to 20,000 chars):\n2026-12-07 INFO worker.py: Connected",
           "logs_tail": "2026-12-07 15:48:48,729 INFO worker.py:2029 -- Connected to Ray\n"
                        "error: training data /d/f.jsonl: 2 of 2 records belong to domain(s)\n"
                        "'api', not 'devops'\n"
                        "2026-12-07 15:48:49,001 INFO worker.py -- shutting down\n"}  # fmt: skip
    assert failure_reason(job) == (
        "Job entrypoint command failed with exit code 1 — error: training data /d/f.jsonl: "
        "2 of 2 records belong to domain(s) 'api', not 'devops'"
    )
    crash = {"logs_tail": "Traceback (most recent call last):\n  ...\nValueError: bad\n"}
    assert failure_reason(crash) == "ValueError: bad"
    assert failure_reason({}).startswith("the job failed without a message")


def test_adapter_rows_show_lineage():
    listing = [{"id": "api", "versions": [
        {"version": 2, "current": True, "signed": False, "problem": "tampered", "domain": "api",
         "metrics": {"eval_loss_before": 3.0, "eval_loss_after": 2.5}, "data_hash": "ab" * 32,
         "run": {"run_name": "ftjob-1"}, "method": "lora", "created_at": "2026"}]}]  # fmt: skip
    [row] = adapter_rows(listing)
    assert row["signed"] == "NO: tampered" and row["held-out loss"] == "3.000 → 2.500"
    assert row["data"] == "abababababab" and row["run"] == "ftjob-1"
