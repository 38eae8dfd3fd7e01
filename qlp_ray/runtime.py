"""Getting a Ray cluster to run on: connect, reuse, or start one.

- ``RAY_ADDRESS`` set: connect to that cluster.
- ``persistent=True`` (``qlp serve``, which returns while the app keeps serving): reuse a
  running local cluster (``address="auto"``) or start one with ``ray start --head``
  (dashboard bound to 127.0.0.1) and connect to it.
- otherwise: an in-process local Ray that ends with this process.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from qlp_ray.config import REPO_ROOT, QLPConfig
from qlp_ray.errors import QLPError

logger = logging.getLogger(__name__)


def _runtime_env() -> dict[str, Any]:
    """Let Ray workers import qlp_ray when it runs from a source tree (not installed)."""
    if "site-packages" in str(Path(__file__).resolve()):
        return {}
    paths = [str(REPO_ROOT), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    return {"env_vars": {"PYTHONPATH": os.pathsep.join(dict.fromkeys(paths))}}


def _ray_cli() -> str:
    beside = Path(sys.executable).parent / "ray"
    found = str(beside) if beside.is_file() else shutil.which("ray")
    if not found:
        raise QLPError("the `ray` command is not installed next to this Python")
    return found


def start_local_cluster() -> None:
    """``ray start --head`` on this machine, dashboard on 127.0.0.1, no usage stats."""
    cmd = [_ray_cli(), "start", "--head", "--dashboard-host", "127.0.0.1",
           "--disable-usage-stats"]  # fmt: skip
    logger.info("starting a local Ray cluster: %s", " ".join(cmd))
    env = dict(os.environ)
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
            start_local_cluster()
            ray.init(address="auto", runtime_env=runtime_env)
            return "started"
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
