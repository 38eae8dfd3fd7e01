"""Ray jobs on the session cluster: an unplaceable `qlp train` job and the Python Client's
job methods. (A REST fine-tuning job and `ray job submit -- qlp train` that succeed, on a
2-CPU cluster while serving: tests/e2e/test_train_while_serving.py.)"""

from __future__ import annotations

import json
import os
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


def test_unplaceable_training_job_fails_fast_with_the_reason(dashboard, qlp_home):
    """A run asking for more CPUs than any node has waits with the reason (the scheduler's
    placements show it), then fails with it after train.placement_timeout_s; it never
    hangs in Ray Train's start-up retries. (`ray job submit -- qlp train` succeeding:
    tests/e2e/test_train_while_serving.py.)"""
    from actors.launch import placements
    from qlp_ray.core.jobs import JobsClient

    env = {**_job_env(qlp_home), "QLP_TRAIN__CPUS_PER_WORKER": "100",
           "QLP_TRAIN__PLACEMENT_TIMEOUT_S": "5"}  # fmt: skip
    client = JobsClient(dashboard)
    t0 = time.monotonic()
    job = client.submit_job(
        ["train", "--domain", "api", "--data", str(API_TRAIN), "--steps", "5"], env=env
    )
    waiting = None
    while (status := client.job_status(job)) not in TERMINAL and time.monotonic() - t0 < 180:
        for run_id, record in placements().items():
            if run_id.endswith(f":{job}"):
                waiting = record
        time.sleep(0.5)
    elapsed = time.monotonic() - t0
    logs = client.job_logs(job)
    assert status == "FAILED", logs[-3000:]
    assert elapsed < 120, f"an unplaceable job took {elapsed:.0f} s to fail"
    need = "needs 100 CPU per worker"
    assert waiting is not None and waiting["state"] == "waiting", waiting
    assert waiting["reason"].startswith(need) and "CPU free on the freest node" in waiting["reason"]
    assert f"cannot place training: {need}" in logs, logs[-3000:]
    assert "waited 5 s" in logs
    assert not any(r.endswith(f":{job}") for r in placements())  # released


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
