"""Each page of the web UI run by Streamlit's ``AppTest`` against the gateway's real routes
on a real HTTP server (tests/ui/api_server.py; no Ray): what it shows and sends, and the
messages for a gateway that is down, a wrong API key, an invalid row, a failed job."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
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


class _Recording(httpx.HTTPTransport):
    """A real HTTP transport that keeps each request it sends (to read the launch body)."""

    def __init__(self) -> None:
        super().__init__()
        self.sent: list[httpx.Request] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self.sent.append(request)
        return super().handle_request(request)


def test_ppo_options_are_offered_sent_and_checked_by_the_gateway(platform):
    url, ppo = platform["url"], platform["cfg"].train.ppo
    state = _wizard_state(url, 8)  # capsules: PPO takes the instruction as the prompt
    config = {"model": "api", "method": "ppo", "reward": "keyword:cursor,page"}
    at = page("configure", url, config=config, **state)
    assert not at.exception and not errors(at), errors(at)
    names = ("kl_coef", "kl_target", "clip_range", "ppo_epochs")
    fields = {n: at.number_input(key=f"hp_{n}") for n in names}
    assert {n: f.value for n, f in fields.items()} == {n: getattr(ppo, n) for n in names}
    assert fields["kl_target"].value is None  # optional: adaptive KL off by default
    assert (fields["kl_coef"].min, fields["kl_coef"].max) == (0.0, 100.0)
    assert (fields["ppo_epochs"].min, fields["ppo_epochs"].max) == (1, 64)
    assert (fields["clip_range"].min, fields["clip_range"].max) == (0.0, 1.0)
    chosen = {"kl_coef": 0.05, "kl_target": 6.0, "clip_range": 0.1, "ppo_epochs": 3}
    for name, value in chosen.items():
        fields[name].set_value(value)
    at = at.run()
    assert {n: at.session_state["config"][n] for n in names} == chosen

    sft = page("configure", url, config={"model": "api", "method": "sft"}, **state)
    assert not [w for w in sft.number_input if str(w.key).startswith("hp_")]  # ppo only

    config = {**at.session_state["config"], "n_steps": 2}
    transport = _Recording()
    held = ((url, ADMIN_KEY), Client(url, api_key=ADMIN_KEY, transport=transport))
    at = page("launch", url, config=config, _client=held, **state)
    review = json.loads(at.json[0].value)
    assert review["method"] == "ppo" and {n: review["hyperparameters"][n] for n in names} == chosen
    at = click(at, "Launch training")  # validated (method, options, shape) before the Jobs API
    assert errors(at)[0].startswith("The platform cannot do this right now (503)"), errors(at)
    [job] = [r for r in transport.sent if r.url.path == "/v1/fine-tuning/jobs"]
    body = json.loads(job.content)
    assert body["method"] == "ppo" and body["reward"] == "keyword:cursor,page"
    assert body["hyperparameters"] == {**chosen, "n_steps": 2, "batch_size": 8,
                                       "learning_rate": 2e-3, "lora_rank": 8,
                                       "lora_alpha": 16, "lora_dropout": 0.05}  # fmt: skip

    at = page("configure", url, config=config, **state)
    at.number_input(key="hp_clip_range").set_value(1.0)  # the widget's limit; the API's is < 1
    at = at.run()
    at = page("launch", url, config=at.session_state["config"], **state)
    at = click(at, "Launch training")
    assert errors(at) == ["The gateway refused the request: `hyperparameters.clip_range`: "
                          "Input should be less than 1 (got 1.0)"]  # fmt: skip
    assert at.session_state["job_id"] is None
