"""The routes the web UI stands on: dataset checks and uploads, estimates, job metrics, the
adapter console (over HTTP through FastAPI's TestClient, no Ray)."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from qlp_ray.core.config import REPO_ROOT
from qlp_ray.serve.http.errors import install_error_handlers
from qlp_ray.serve.http.routes_adapters import router as adapters_router
from qlp_ray.serve.http.routes_datasets import router as datasets_router
from qlp_ray.serve.http.routes_jobs import FineTuningRequest, train_command
from qlp_ray.serve.http.routes_training import router as training_router
from tests.helpers.jobs_api import ADMIN, jobs_config

API_TRAIN = REPO_ROOT / "qlp_ray" / "data" / "samples" / "api.train.jsonl"
ROW = {"instruction": "Paginate GET /orders with a cursor", "output": "Return next_cursor.",
       "domain": "api"}  # fmt: skip


@pytest.fixture()
def cfg(tmp_path):
    return jobs_config(tmp_path)


@pytest.fixture()
def http(cfg):
    app = FastAPI()
    for router in (training_router, datasets_router, adapters_router):
        app.include_router(router)
    install_error_handlers(app)
    app.state.gateway = SimpleNamespace(cfg=cfg)
    return TestClient(app)


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("POST", "/v1/datasets/validate", {"rows": []}),
        ("POST", "/v1/files", {"rows": [ROW]}),
        ("POST", "/v1/fine-tuning/estimate", {"training_file": str(API_TRAIN)}),
        ("GET", "/v1/fine-tuning/jobs/x/metrics", None),
        ("GET", "/v1/admin/adapters", None),
        ("POST", "/v1/admin/adapters/api/promote", {"version": 1}),
    ],
)
def test_new_routes_need_the_admin_key(http, method, path, body):
    r = http.request(method, path, json=body)
    assert r.status_code == 401, r.text
    r = http.request(method, path, json=body, headers={"authorization": "Bearer user-key"})
    assert r.status_code == 403


def test_validate_flags_each_row(http):
    pii = {**ROW, "instruction": "Mail jane.doe@corp.example the key AKIAABCDEFGHIJKLMNOP"}
    rows = [ROW, dict(ROW), {**ROW, "output": "ok"}, {**ROW, "output": ""}, pii]
    r = http.post("/v1/datasets/validate", json={"rows": rows}, headers=ADMIN)
    assert r.status_code == 200, r.text
    report = r.json()
    assert [row["flags"] for row in report["rows"]] == [
        [],
        ["duplicate"],
        ["too_short"],
        ["invalid"],
        ["pii"],
    ]
    assert report["rows"][1]["duplicate_of"] == 0
    assert report["rows"][4]["pii"] == ["aws_access_key", "email"]
    assert "output" in report["rows"][3]["errors"][0]
    assert report["valid"] == 4 and report["domains"] == {"api": 4}
    assert report["min_records"] == 2 and report["enough"] is True
    assert report["recommended_records"] == 200  # evaluation.min_train_examples


def test_upload_writes_a_file_a_job_accepts(http, cfg):
    r = http.post("/v1/files", json={"filename": "mine.jsonl", "rows": [ROW, ROW]}, headers=ADMIN)
    assert r.status_code == 200, r.text
    out = r.json()
    lines = [json.loads(x) for x in open(out["path"], encoding="utf-8")]
    assert lines == [ROW, ROW] and out["rows"] == 2 and out["domains"] == {"api": 2}
    command = train_command(cfg, FineTuningRequest(model="api", training_file=out["path"]))
    assert command[command.index("--data") + 1] == out["path"]

    bad = http.post("/v1/files", json={"rows": [ROW, {"instruction": "x"}]}, headers=ADMIN)
    assert bad.status_code == 400
    err = bad.json()["error"]
    assert err["param"] == "rows.1" and err["message"].startswith("row 2: ")


def test_hyperparameters_become_train_options(cfg):
    body = FineTuningRequest(model="api", training_file=str(API_TRAIN), hyperparameters={
        "n_epochs": 1, "batch_size": 8, "learning_rate": 0.001, "lora_rank": 4,
        "lora_alpha": 8, "lora_dropout": 0.1, "method": "lora"})  # fmt: skip
    command = train_command(cfg, body, run_name="ftjob-1")
    n = sum(1 for line in API_TRAIN.read_text().splitlines() if line.strip())
    n_train = n - max(1, round(n * cfg.train.eval_fraction))
    assert command[command.index("--steps") + 1] == str(-(-n_train // 8))  # ceil
    assert command[-2:] == ["--run-name", "ftjob-1"]
    expected = {"--batch-size": "8", "--lr": "0.001", "--rank": "4", "--alpha": "8",
                "--dropout": "0.1", "--method": "lora"}  # fmt: skip
    for option, value in expected.items():
        assert command[command.index(option) + 1] == value


def test_epochs_past_the_step_limit_name_the_field(http):
    body = {"training_file": str(API_TRAIN), "hyperparameters": {"n_epochs": 100}}
    r = http.post("/v1/fine-tuning/estimate", json=body, headers=ADMIN)
    assert r.status_code == 400 and r.json()["error"]["param"] == "hyperparameters.n_epochs"
    body["hyperparameters"] = {"n_epochs": 1, "n_steps": 3}
    r = http.post("/v1/fine-tuning/estimate", json=body, headers=ADMIN)
    assert r.status_code == 400 and "not both" in r.json()["error"]["message"]


def test_metrics_of_a_job_without_a_jobs_api_is_503(http):
    r = http.get("/v1/fine-tuning/jobs/ftjob-1/metrics", headers=ADMIN)
    assert r.status_code == 503 and "unreachable" in r.json()["error"]["message"]


def test_empty_registry_lists_no_adapters_and_promote_is_404(http):
    r = http.get("/v1/admin/adapters", headers=ADMIN)
    assert r.status_code == 200 and r.json() == {"object": "list", "data": []}
    r = http.post("/v1/admin/adapters/api/promote", json={"version": 1}, headers=ADMIN)
    assert r.status_code == 404
