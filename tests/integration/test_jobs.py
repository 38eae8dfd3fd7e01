"""qlp commands as Ray jobs through JobSubmissionClient (real local Ray with its dashboard)."""

from __future__ import annotations

import json
import socket
import time

import pytest

from qlp_ray.errors import InvalidRequest, NotFound
from qlp_ray.jobs import TERMINAL, JobsClient, qlp_entrypoint

pytestmark = pytest.mark.integration


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def jobs():
    import ray
    from ray.cluster_utils import Cluster

    if ray.is_initialized():
        ray.shutdown()  # another module's cluster has no dashboard (the Jobs API lives there)
    port = _free_port()
    # Cluster (not ray.init) so the dashboard agent gets a free port too: the default 52365
    # is taken by other Ray clusters on a shared machine
    cluster = Cluster(
        initialize_head=True,
        head_node_args={
            "num_cpus": 2,
            "include_dashboard": True,
            "dashboard_host": "127.0.0.1",
            "dashboard_port": port,
            "dashboard_agent_listen_port": _free_port(),
        },
    )
    ray.init(address=cluster.address, log_to_driver=False)
    yield JobsClient(f"http://127.0.0.1:{port}")
    ray.shutdown()
    cluster.shutdown()


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


def test_submit_status_logs_and_cancel(jobs, tmp_path):
    env = {"QLP_HOME": str(tmp_path)}
    job = jobs.submit_job(["eval", "leaderboard", "--json"], env=env)
    assert _wait(jobs, job) == "SUCCEEDED", jobs.job_logs(job)
    assert json.loads(jobs.job_logs(job).strip().splitlines()[-1]) == []
    assert any(j.job_id == job for j in jobs.list_jobs())

    # a long job (a 50-trial tune), cancelled while it runs
    slow = jobs.submit_job(
        ["tune", "--domain", "api", "--trials", "50"], env=env, job_id=f"tune-{int(time.time())}"
    )
    assert _wait(jobs, slow, statuses=("RUNNING", *TERMINAL)) == "RUNNING"
    assert jobs.cancel_job(slow) is True
    assert _wait(jobs, slow) == "STOPPED"
    with pytest.raises(NotFound):
        jobs.job_status("no-such-job")
