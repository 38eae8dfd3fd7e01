"""/v1/fine-tuning, /v1/evaluations, /v1/optimizations: auth and validation over HTTP (no Ray)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from qlp_ray.core.config import REPO_ROOT
from qlp_ray.serve.http.errors import install_error_handlers
from qlp_ray.serve.http.routes_jobs import FineTuningRequest, router, train_command
from tests.helpers.jobs_api import ADMIN, jobs_config

API_TRAIN = REPO_ROOT / "qlp_ray" / "data" / "samples" / "api.train.jsonl"


@pytest.fixture()
def cfg(tmp_path):
    return jobs_config(tmp_path)


@pytest.fixture()
def http(cfg):
    app = FastAPI()
    app.include_router(router)
    install_error_handlers(app)
    app.state.gateway = SimpleNamespace(cfg=cfg)
    return TestClient(app)


def _ft(**kw):
    return {"model": "api", "training_file": str(API_TRAIN), **kw}


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("POST", "/v1/fine-tuning/jobs", _ft()),
        ("GET", "/v1/fine-tuning/jobs", None),
        ("GET", "/v1/fine-tuning/jobs/x", None),
        ("DELETE", "/v1/fine-tuning/jobs/x", None),
        ("POST", "/v1/evaluations", {"domain": "api"}),
        ("GET", "/v1/evaluations/leaderboard", None),
        ("POST", "/v1/optimizations", {}),
    ],
)
def test_every_route_needs_the_admin_key(http, method, path, body):
    r = http.request(method, path, json=body)
    assert r.status_code == 401 and "admin key" in r.json()["error"]["message"]
    r = http.request(method, path, json=body, headers={"authorization": "Bearer user-key"})
    assert r.status_code == 403 and r.json()["error"]["type"]


@pytest.mark.parametrize(
    ("body", "param", "needle"),
    [
        (_ft(model="nope"), "model", "must be a domain"),
        (_ft(training_file="/no/such/file.jsonl"), "training_file", "not a .jsonl file in"),
        (_ft(training_file=str(REPO_ROOT / "pyproject.toml")), "training_file", ".jsonl"),
        (_ft(validation_file="/nope.jsonl"), "validation_file", "not a .jsonl file in"),
        (_ft(hyperparameters={"n_steps": 51}), "hyperparameters.n_steps", "at most 50"),
    ],
)
def test_fine_tuning_validation_names_the_field(http, body, param, needle):
    r = http.post("/v1/fine-tuning/jobs", json=body, headers=ADMIN)
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["param"] == param and needle in err["message"]


@pytest.mark.parametrize(
    "body",
    [
        _ft(hyperparameters={"n_steps": 0}),
        _ft(hyperparameters={"method": "full"}),
        _ft(hyperparameters={"lr": 1}),
        {"training_file": str(API_TRAIN)},
    ],
)
def test_fine_tuning_schema_errors_are_400(http, body):
    r = http.post("/v1/fine-tuning/jobs", json=body, headers=ADMIN)
    assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error"


def test_train_command_from_a_valid_body(cfg):
    body = FineTuningRequest.model_validate(
        _ft(hyperparameters={"n_steps": 7, "method": "adalora"})
    )
    assert train_command(cfg, body) == [
        "train", "--domain", "api", "--data", str(API_TRAIN.resolve()),
        "--steps", "7", "--method", "adalora",
    ]  # fmt: skip


def test_valid_submission_without_a_jobs_api_is_503(http):
    r = http.post("/v1/fine-tuning/jobs", json=_ft(), headers=ADMIN)
    assert r.status_code == 503 and "unreachable" in r.json()["error"]["message"]


def test_evaluation_and_optimization_validation(http):
    def post(path, body):
        return http.post(path, json=body, headers=ADMIN)

    r = post("/v1/evaluations", {"domain": "chess"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "domain"
    r = post("/v1/evaluations", {"domain": "api", "version": 2})
    assert r.status_code == 400 and r.json()["error"]["param"] == "version"
    r = post("/v1/optimizations", {"method": "dynamic-int8", "sparsity": 0.5})
    assert r.status_code == 400 and r.json()["error"]["param"] == "sparsity"
    assert post("/v1/optimizations", {"method": "gzip"}).status_code == 400
    assert post("/v1/optimizations", {"method": "magnitude", "sparsity": 0.95}).status_code == 400


def test_leaderboard_reads_the_store(http):
    r = http.get("/v1/evaluations/leaderboard", headers=ADMIN)
    assert r.status_code == 200 and r.json() == {"object": "list", "metric": "score", "data": []}
    r = http.get("/v1/evaluations/leaderboard?domain=chess", headers=ADMIN)
    assert r.status_code == 400 and r.json()["error"]["param"] == "domain"


def test_data_files_must_lie_in_the_job_data_directories(http, cfg, tmp_path):
    """`..`, a symlink out, or a file elsewhere: refused with the same words as a missing
    file, so the answer does not tell which paths exist on the server."""
    outside = tmp_path / "elsewhere" / "secrets.jsonl"
    outside.parent.mkdir()
    outside.write_text('{"instruction": "x", "output": "y"}\n')
    data = cfg.paths.root / "data"
    data.mkdir(parents=True, exist_ok=True)
    (data / "link.jsonl").symlink_to(outside)
    (data / "mine.jsonl").write_text(API_TRAIN.read_text())
    messages = set()
    for path in (
        str(outside),  # exists, elsewhere
        str(data / ".." / "elsewhere" / "secrets.jsonl"),  # .. out of data/
        str(data / "link.jsonl"),  # a symlink out of data/
        str(data / "missing.jsonl"),  # inside, missing
    ):
        r = http.post("/v1/fine-tuning/jobs", json=_ft(training_file=path), headers=ADMIN)
        assert r.status_code == 400, (path, r.text)
        messages.add(r.json()["error"]["message"].replace(repr(path), "<path>"))
    assert len(messages) == 1 and "`jobs.data_dirs`" in messages.pop()
    # inside the home's data/ (and the bundled samples): accepted as the resolved path
    command = train_command(cfg, FineTuningRequest(**_ft(training_file=str(data / "mine.jsonl"))))
    assert command[command.index("--data") + 1] == str((data / "mine.jsonl").resolve())
