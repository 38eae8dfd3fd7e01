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
    failure_reason,
    friendly_error,
    hyperparameters,
    loss_frame,
    parse_jsonl,
    review_table,
    rows_from_table,
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
    assert hyperparameters(config) == {"method": "lora", "lora_rank": 4, "n_epochs": 2.0}
    assert hyperparameters({**config, "length": "steps"})["n_steps"] == 9


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
