"""Each page of the web UI run by Streamlit's ``AppTest`` against the gateway's real routes
on a real HTTP server (tests/ui/api_server.py; no Ray): what it shows and sends, and the
messages for a gateway that is down, a wrong API key, an invalid row, a failed job."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from qlp_ray.client import Client
from tests.ui.api_server import free_port
from tests.ui.conftest import ADMIN_KEY, ROW, SAMPLES, click, errors, page, registry_base


def add_example(at: AppTest, instruction: str, output: str, domain: str = "api") -> AppTest:
    at.selectbox(key="form_domain").select(domain)
    at.text_area(key="form_instruction").input(instruction)
    at.text_area(key="form_output").input(output)
    return click(at, "Add example")


def test_dataset_form_flags_and_minimum(platform):
    at = page("dataset", platform["url"])
    assert not at.exception and "No examples yet" in at.info[0].value
    at = add_example(at, ROW["instruction"], ROW["output"])
    assert at.session_state["rows"] == [ROW]
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Rows"] == "1" and metrics["Valid rows"] == "1"
    assert metrics["Trainer minimum"] == "2" and metrics["Recommended"] == "200"
    assert "the trainer needs at least 2" in at.warning[0].value

    at = add_example(at, ROW["instruction"], ROW["output"])  # the same again
    at = add_example(at, "Mail ops@corp.example", "ok")  # PII, too short
    table = at.session_state["report"]["rows"]
    assert [r["flags"] for r in table] == [[], ["duplicate"], ["too_short", "pii"]]
    assert "duplicate: 1, too short: 1, PII: 1, invalid: 0" in at.caption[-1].value

    at.number_input(key="delete_row").set_value(2)
    at = click(at, "Delete row")
    assert len(at.session_state["rows"]) == 2
    assert at.session_state["report"]["flag_counts"]["duplicate"] == 0


def test_import_reports_bad_lines_and_invalid_rows(platform):
    at = page("dataset", platform["url"])
    bad = {**ROW, "output": ""}
    at.text_area(key="import_text").input(json.dumps(ROW) + "\n{not json\n" + json.dumps(bad))
    at = click(at, "Import")
    assert any("line 2: not JSON" in e for e in errors(at))
    assert "Imported 2 rows." in at.success[0].value
    invalid = [e for e in errors(at) if e.startswith("Invalid row")]
    assert invalid == ["Invalid row — Row 2: output: Value error, must be a non-empty string"]


def test_gateway_down_and_wrong_key_are_messages(platform):
    down = f"http://127.0.0.1:{free_port()}"
    at = page("dataset", down)  # the method table is the first answer it needs
    assert not at.exception
    assert errors(at) == [f"The gateway at {down} is not reachable. Is `qlp serve` running, "
                          "and is the URL in the sidebar right?"]  # fmt: skip
    at = page("dataset", platform["url"], key="wrong")
    assert not at.exception and "refused the API key (401)" in errors(at)[0]
    at = page("adapters", platform["url"], key="user-key")
    assert "may not use admin routes (403)" in errors(at)[0]


def _wizard_state(url: str, n: int = 24) -> dict:
    """The sample rows and the API's report on them (what step 1 leaves behind)."""
    lines = (SAMPLES / "api.train.jsonl").read_text().splitlines()[:n]
    rows = [json.loads(line) for line in lines]
    with Client(url, api_key=ADMIN_KEY) as client:
        return {"rows": rows, "report": client.validate_dataset(rows)}


def test_configure_estimates_from_measured_throughput(platform):
    at = page("configure", platform["url"], **_wizard_state(platform["url"]))
    assert not at.exception and not errors(at)
    assert at.text_input[0].value == registry_base(platform["cfg"])  # from /health
    assert at.text_input[1].value == "api"  # the dataset's domain
    at.number_input[3].set_value(2.0)  # epochs
    at = click(at, "Estimate cost and time")
    est = at.session_state["estimate"]
    assert not errors(at), errors(at)
    n_train = 24 - max(1, round(24 * platform["cfg"].train.eval_fraction))
    assert est["steps"] == -(-2 * n_train // 8)
    assert est["tokens_per_s"] == 2000.0 and est["throughput_from"]["version"] == 2
    assert est["seconds"] == pytest.approx(est["tokens"] / 2000.0, abs=0.1)
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Steps"] == str(est["steps"]) and metrics["Time"].endswith(" s")
    assert Path(at.session_state["upload"]["path"]).is_file()


def test_launch_without_a_jobs_api_says_so(platform):
    config = {"model": "api", "method": "lora", "length": "steps", "n_steps": 3}
    at = page("launch", platform["url"], config=config, **_wizard_state(platform["url"], 4))
    assert at.json[0].value and "n_steps" in at.json[0].value
    at = click(at, "Launch training")
    assert not at.exception
    assert errors(at)[0].startswith("The platform cannot do this right now (503): the Ray Jobs")
    assert at.session_state["job_id"] is None


def test_monitor_without_a_jobs_api_says_so(platform):
    at = page("monitor", platform["url"])
    assert not at.exception and "(503)" in errors(at)[0]


def test_adapters_console_promotes_and_rolls_back(platform):
    at = page("adapters", platform["url"])
    assert not at.exception and not errors(at)
    assert at.selectbox[0].value == "api"
    at.selectbox(key="version_choice").select(1)
    at = click(at, "Verify")
    assert "api v1 verifies" in at.success[0].value
    at = click(at, "Roll back")
    assert "rolled back to v1 (was v2)" in at.success[0].value
    assert platform["registry"].get("api").version == 1
    at.selectbox(key="version_choice").select(2)
    at = click(at, "Promote")
    assert "v2 is current (was v1)" in at.success[0].value
    at.selectbox(key="version_choice").select(2)
    at = click(at, "Roll back")  # not older than current: refused with a reason
    assert "a rollback goes to an older version" in errors(at)[0]
