"""qlp commands as Ray jobs through JobSubmissionClient (real local Ray with its dashboard)."""

from __future__ import annotations

import json
import time

import pytest

from qlp_ray.core.errors import InvalidRequest, NotFound
from qlp_ray.core.jobs import TERMINAL, JobsClient, qlp_entrypoint

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def jobs(ray_dashboard):
    return JobsClient(ray_dashboard)


def _wait(client: JobsClient, job_id: str, statuses=TERMINAL, timeout: float = 240) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = client.job_status(job_id)
        if status in statuses:
            return status
        time.sleep(0.5)
    raise AssertionError(f"job {job_id} still {status} after {timeout}s")


def test_entrypoint_is_a_quoted_qlp_command():
    assert qlp_entrypoint(["eval", "leaderboard", "--domain", "a b"], python="py") == (
        "py -m qlp_ray eval leaderboard --domain 'a b'"
    )
    with pytest.raises(InvalidRequest, match="must start with one of"):
        qlp_entrypoint(["rm", "-rf", "/"])


def test_submit_status_logs_and_cancel(jobs, tmp_path, monkeypatch):
    # the submitter holds secrets: none may reach the job's runtime env, which anyone who
    # can read the Jobs API sees; plain settings do
    monkeypatch.setenv("QLP_SERVE__ADMIN_KEY", "adm-secret")
    monkeypatch.setenv("QLP_S3__SECRET_ACCESS_KEY", "s3-secret")
    monkeypatch.setenv("QLP_DB_URL", "postgresql://qlp:pw@db/qlp")
    monkeypatch.setenv("QLP_EVALUATION__MAX_NEW_TOKENS", "4")
    env = {"QLP_HOME": str(tmp_path)}
    job = jobs.submit_job(["eval", "leaderboard", "--json"], env=env)
    assert _wait(jobs, job) == "SUCCEEDED", jobs.job_logs(job)
    assert json.loads(jobs.job_logs(job).strip().splitlines()[-1]) == []
    assert any(j.job_id == job for j in jobs.list_jobs())
    visible = json.dumps(jobs._client.get_job_info(job).runtime_env)
    assert "secret" not in visible and "pw@db" not in visible, visible
    assert "QLP_EVALUATION__MAX_NEW_TOKENS" in visible

    # a long job (a 50-trial tune), cancelled while it runs
    slow = jobs.submit_job(
        ["tune", "--domain", "api", "--trials", "50"], env=env, job_id=f"tune-{int(time.time())}"
    )
    assert _wait(jobs, slow, statuses=("RUNNING", *TERMINAL)) == "RUNNING"
    assert jobs.cancel_job(slow) is True
    assert _wait(jobs, slow) == "STOPPED"
    with pytest.raises(NotFound):
        jobs.job_status("no-such-job")
