"""`ray job submit -- qlp train ...` (the real `ray` CLI) and the Python Client's job methods."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from qlp_ray.core.config import REPO_ROOT, load_config
from qlp_ray.core.errors import NotFound
from qlp_ray.core.jobs import TERMINAL

pytestmark = pytest.mark.integration

VENV_BIN = Path(sys.executable).parent
API_TRAIN = REPO_ROOT / "qlp_ray" / "data" / "samples" / "api.train.jsonl"
# a very small tiny model: it is built (tokenizer + pre-training) on first use inside the job
TINY_ENV = {
    "QLP_MODEL__TINY__PRETRAIN_STEPS": "5",
    "QLP_MODEL__TINY__HIDDEN_SIZE": "32",
    "QLP_MODEL__TINY__NUM_LAYERS": "1",
    "QLP_MODEL__TINY__NUM_HEADS": "2",
    "QLP_MODEL__TINY__INTERMEDIATE_SIZE": "64",
    "QLP_MODEL__TINY__VOCAB_SIZE": "512",
}


@pytest.fixture(scope="module")
def dashboard(ray_dashboard):
    return ray_dashboard


@pytest.fixture(scope="module")
def qlp_home(tmp_path_factory):
    """One home for the module: the tiny base model is built by the first job only."""
    from qlp_ray.registry.signing import init_keys

    tmp_path = tmp_path_factory.mktemp("qlp_home")

    cfg = load_config(environ={"QLP_HOME": str(tmp_path), **TINY_ENV})
    init_keys(cfg.paths.keys)
    return tmp_path


def _job_env(home: Path) -> dict[str, str]:
    return {
        "QLP_HOME": str(home),
        **TINY_ENV,
        "PYTHONPATH": str(REPO_ROOT),
        "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        "HF_HUB_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
    }


def test_ray_job_submit_qlp_train_registers_a_signed_adapter(dashboard, qlp_home):
    env = _job_env(qlp_home)
    cmd = [
        str(VENV_BIN / "ray"), "job", "submit", "--address", dashboard,
        "--runtime-env-json", json.dumps({"env_vars": env}),
        "--", "qlp", "train", "--domain", "api", "--data", str(API_TRAIN),
        "--steps", "5", "--workers", "1", "--adapter-id", "api-job",
    ]  # fmt: skip
    # `ray job submit` waits for the job and exits non-zero when it fails
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=200, env={**os.environ})
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "succeeded" in done.stdout.lower(), done.stdout[-2000:]

    from qlp_ray.registry.store import Registry

    cfg = load_config(environ={"QLP_HOME": str(qlp_home), **TINY_ENV})
    record = Registry(cfg).get("api-job")
    assert record.version == 1 and record.signed, record.problem
    assert record.metadata["metrics"]["steps"] == 5
    assert Registry(cfg).verify("api-job", 1).signed


def test_client_job_methods(dashboard, qlp_home):
    from qlp_ray.client import Client

    client = Client(ray_address=dashboard)
    job = client.submit_job(["eval", "leaderboard", "--json"], env=_job_env(qlp_home))
    deadline = time.monotonic() + 120
    while (status := client.job_status(job)) not in TERMINAL and time.monotonic() < deadline:
        time.sleep(0.5)
    assert status == "SUCCEEDED", client.job_logs(job)
    assert json.loads(client.job_logs(job).strip().splitlines()[-1]) == []
    assert client.cancel_job(job) is False  # already finished
    with pytest.raises(NotFound):
        client.job_status("no-such-job")


def test_fine_tuning_job_over_http(dashboard, qlp_home, monkeypatch):
    """POST /v1/fine-tuning/jobs submits a real Ray job; GET follows it to 'succeeded'."""
    from types import SimpleNamespace

    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    from qlp_ray.registry.store import Registry
    from qlp_ray.serve.http.errors import install_error_handlers
    from qlp_ray.serve.http.routes_jobs import router

    for key, value in TINY_ENV.items():  # forwarded to the job (QLP_* of the gateway process)
        monkeypatch.setenv(key, value)
    cfg = load_config(
        overrides={"serve": {"admin_key": "adm"}, "jobs": {"dashboard_address": dashboard}},
        environ={"QLP_HOME": str(qlp_home), **TINY_ENV},
    )
    app = FastAPI()
    app.include_router(router)
    install_error_handlers(app)
    app.state.gateway = SimpleNamespace(cfg=cfg)
    http = TestClient(app, headers={"authorization": "Bearer adm"})

    body = {"model": "api", "training_file": str(API_TRAIN), "hyperparameters": {"n_steps": 3}}
    r = http.post("/v1/fine-tuning/jobs", json=body)
    assert r.status_code == 200, r.text
    job_id = r.json()["id"]
    deadline = time.monotonic() + 150
    while (job := http.get(f"/v1/fine-tuning/jobs/{job_id}").json())["status"] in (
        "queued",
        "running",
    ) and time.monotonic() < deadline:
        time.sleep(1.0)
    assert job["status"] == "succeeded", job
    assert job_id in [j["id"] for j in http.get("/v1/fine-tuning/jobs").json()["data"]]
    r = http.delete(f"/v1/fine-tuning/jobs/{job_id}")
    assert r.status_code == 200 and r.json()["cancel_requested"] is False
    assert http.get("/v1/fine-tuning/jobs/nope").status_code == 404
    record = Registry(cfg).get("api")
    assert record.signed and record.metadata["metrics"]["steps"] == 3
