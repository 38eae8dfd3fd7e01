"""Getting a Ray cluster to run on: connect, reuse, or start one.

- ``RAY_ADDRESS`` set: connect to that cluster.
- ``persistent=True`` (``qlp serve``, which returns while the app keeps serving): reuse a
  running local cluster (``address="auto"``) or start one with ``ray start --head``
  (dashboard bound to 127.0.0.1) and connect to it.
- otherwise: an in-process local Ray that ends with this process.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from qlp_ray.core.config import QLPConfig
from qlp_ray.core.errors import QLPError
from qlp_ray.core.paths import source_checkout

logger = logging.getLogger(__name__)


def _runtime_env() -> dict[str, Any]:
    """Let Ray workers import qlp_ray when it runs from a source checkout (an installed
    qlp_ray is importable there already)."""
    root = source_checkout()
    if root is None:
        return {}
    paths = [str(root), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    return {"env_vars": {"PYTHONPATH": os.pathsep.join(dict.fromkeys(paths))}}


def serve_env(cfg: QLPConfig) -> dict[str, str]:
    """Environment the Serve processes of a cluster qlp starts get (read by Ray Serve at
    import, so it must be there when the raylet forks them).

    Throughput mode without its direct ingress: that opens an HTTP port per ingress replica
    for an external load balancer and holds each one open 30 s when it stops (so a
    shutdown or redeploy waits 30 s); qlp serves through the one proxy port.
    """
    if cfg.serve.ray_throughput_optimized:
        return {"RAY_SERVE_THROUGHPUT_OPTIMIZED": "1", "RAY_SERVE_ENABLE_DIRECT_INGRESS": "0"}
    return {}


@contextlib.contextmanager
def cluster_env(cfg: QLPConfig) -> Iterator[None]:
    """:func:`serve_env` in ``os.environ`` while a cluster starts (its processes inherit
    it), then as before: this process's own handles keep Ray's defaults, so synchronous
    ``handle.method.remote(...).result()`` calls outside an event loop keep working. A
    variable the user set already wins."""
    added = {k: v for k, v in serve_env(cfg).items() if k not in os.environ}
    os.environ.update(added)
    try:
        yield
    finally:
        for key in added:
            os.environ.pop(key, None)


def _ray_cli() -> str:
    beside = Path(sys.executable).parent / "ray"
    found = str(beside) if beside.is_file() else shutil.which("ray")
    if not found:
        raise QLPError("the `ray` command is not installed next to this Python")
    return found


def start_local_cluster(cfg: QLPConfig) -> None:
    """``ray start --head`` on this machine, dashboard on 127.0.0.1, no usage stats, with
    :func:`serve_env` of ``cfg``."""
    cmd = [_ray_cli(), "start", "--head", "--dashboard-host", "127.0.0.1",
           "--disable-usage-stats"]  # fmt: skip
    logger.info("starting a local Ray cluster: %s", " ".join(cmd))
    env = {**serve_env(cfg), **os.environ}
    env.update(_runtime_env().get("env_vars", {}))
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    if proc.returncode != 0:
        raise QLPError(f"`ray start --head` failed: {proc.stderr.strip()[-500:]}")


def ensure_ray(cfg: QLPConfig, *, persistent: bool) -> str:
    """Make sure this process is connected to Ray; returns how (``connected``/``started``/...)."""
    import ray

    if ray.is_initialized():
        return "already"
    runtime_env = _runtime_env() or None
    if "RAY_JOB_CONFIG_JSON_ENV_VAR" in os.environ:
        # a Ray job driver: the job's runtime_env already reaches its workers, and Ray
        # refuses a second one that sets the same env vars (e.g. PYTHONPATH)
        runtime_env = None
    address = os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, runtime_env=runtime_env)
        return "connected"
    if persistent:
        try:
            ray.init(address="auto", runtime_env=runtime_env)
            return "reused"
        except ConnectionError:
            start_local_cluster(cfg)
            ray.init(address="auto", runtime_env=runtime_env)
            return "started"
    with cluster_env(cfg):
        ray.init(address="local", include_dashboard=False, runtime_env=runtime_env)
    return "local"


def connect_existing() -> bool:
    """Connect to ``RAY_ADDRESS`` or a running local cluster; False when there is none."""
    import ray

    if ray.is_initialized():
        return True
    try:
        ray.init(
            address=os.environ.get("RAY_ADDRESS") or "auto", runtime_env=_runtime_env() or None
        )
    except ConnectionError:
        return False
    return True


def stop_local_cluster() -> None:
    """``ray stop``: stops the Ray processes of this machine (what ``ray start`` began)."""
    proc = subprocess.run([_ray_cli(), "stop"], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise QLPError(f"`ray stop` failed: {proc.stderr.strip()[-500:]}")
