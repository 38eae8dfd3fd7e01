"""Integration fixtures: a real Ray head with its dashboard (the Jobs API) on free ports.

`ray_local` (a plain local Ray per module) lives in tests/conftest.py.
"""

from __future__ import annotations

import pytest


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ray_dashboard():
    """A real local Ray head whose dashboard (the Jobs API) listens on free ports; its URL.

    ``ray.cluster_utils.Cluster`` rather than ``ray.init`` so the dashboard agent gets a
    free port too (the default 52365 may be taken by another Ray on the machine).
    """
    import ray
    from ray.cluster_utils import Cluster

    if ray.is_initialized():
        ray.shutdown()  # another module's Ray has no dashboard
    from qlp_ray.core.config import QLPConfig
    from qlp_ray.core.runtime import cluster_env

    port = _free_port()
    with cluster_env(QLPConfig()):  # Serve processes as `qlp serve` starts them
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
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        ray.shutdown()
        cluster.shutdown()
