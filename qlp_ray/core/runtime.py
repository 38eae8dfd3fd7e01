"""Getting a Ray cluster to run on: connect, reuse, or start one.

- ``RAY_ADDRESS`` set: connect to that cluster (``RAY_ADDRESS=auto``: any local one).
- else the cluster qlp started for this ``QLP_HOME``, while it runs: reuse it.
- ``persistent=True`` (``qlp serve``, which returns while the app keeps serving): start
  that cluster, ``ray start --head`` in a temp dir of qlp's own (:func:`own_cluster_dir`),
  dashboard on 127.0.0.1, Ray token auth on (``cluster.token_auth``), and connect to it.
  ``qlp shutdown --stop-ray`` stops that cluster only.
- otherwise: an in-process local Ray that ends with this process.

qlp never joins a cluster it merely finds on the machine (Ray's ``address="auto"`` takes any
running one): another project's cluster would get our jobs.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import secrets
import socket
import subprocess
import sys
import tempfile
import time
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


def own_cluster_dir(cfg: QLPConfig) -> Path:
    """Ray's temp dir for the cluster qlp starts for this home: short (Ray's socket paths
    live under it), one per ``QLP_HOME``, under the system temp dir (``TMPDIR``)."""
    digest = hashlib.sha256(str(cfg.paths.root).encode()).hexdigest()[:10]
    return Path(tempfile.gettempdir()) / f"qlp-ray-{digest}"


def _own_processes(cfg: QLPConfig) -> list[Any]:
    """The processes of qlp's own cluster (their command lines name its temp dir) and
    their children (Ray's workers rename themselves ``ray::...``)."""
    import psutil

    marker = str(own_cluster_dir(cfg))
    found: dict[int, Any] = {}
    for proc in psutil.process_iter(["pid", "cmdline"]):
        try:
            if any(marker in part for part in proc.info["cmdline"] or ()):
                found[proc.pid] = proc
                found.update((c.pid, c) for c in proc.children(recursive=True))
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    found.pop(os.getpid(), None)
    return list(found.values())


def own_cluster_address(cfg: QLPConfig) -> str | None:
    """GCS address of the cluster qlp started for this home, when it still runs."""
    address_file = own_cluster_dir(cfg) / "ray_current_cluster"
    if not address_file.is_file():
        return None
    procs = _alive(_own_processes(cfg))
    if not any((p.cmdline() or [""])[0].endswith("gcs_server") for p in procs):
        return None  # the file outlived its cluster
    return address_file.read_text().strip() or None


def _alive(procs: list[Any]) -> list[Any]:
    import psutil

    out = []
    for p in procs:
        try:
            if p.is_running():
                p.cmdline()
                out.append(p)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return out


def cluster_address(cfg: QLPConfig) -> str | None:
    """Where qlp finds a running cluster: ``RAY_ADDRESS``, else its own cluster."""
    return os.environ.get("RAY_ADDRESS") or own_cluster_address(cfg)


def token_path() -> Path:
    """Where Ray's clients read the auth token: ``RAY_AUTH_TOKEN_PATH`` or ~/.ray/auth_token."""
    return Path(os.environ.get("RAY_AUTH_TOKEN_PATH") or Path.home() / ".ray" / "auth_token")


def ensure_token() -> Path:
    """Ray's auth token file, created (owner-only) when there is none; its path."""
    path = token_path()
    if not path.is_file():
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_hex(32))
        logger.info("created a Ray auth token in %s", path)
    return path


def prepare_client(cfg: QLPConfig) -> None:
    """Call before Ray is imported (Ray reads ``RAY_AUTH_MODE`` once, at import): a qlp
    process without ``RAY_ADDRESS`` reaches qlp's own cluster, or starts one, with Ray's
    token when ``cluster.token_auth``. A variable the user set wins."""
    if os.environ.get("RAY_ADDRESS") or "RAY_AUTH_MODE" in os.environ:
        return
    if cfg.cluster.token_auth:
        ensure_token()
        os.environ["RAY_AUTH_MODE"] = "token"


def _init_own(address: str, runtime_env: dict[str, Any] | None) -> None:
    import ray

    try:
        ray.init(address=address, runtime_env=runtime_env)
    except ConnectionError as exc:
        raise QLPError(
            f"cannot connect to qlp's Ray cluster at {address}: {exc}; it requires Ray's token "
            f"({token_path()}): export RAY_AUTH_MODE=token"
        ) from exc


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_local_cluster(cfg: QLPConfig) -> str:
    """``ray start --head`` in :func:`own_cluster_dir`, dashboard on 127.0.0.1, no usage
    stats, token auth per ``cluster.token_auth``, with :func:`serve_env` of ``cfg``; its GCS
    address. Ray's other ports are free ones, so a second cluster on the machine is no
    obstacle."""
    temp_dir = own_cluster_dir(cfg)
    cmd = [sys.executable, "-m", "ray.scripts.scripts", "start", "--head",
           f"--temp-dir={temp_dir}", f"--port={_free_port()}", "--dashboard-host=127.0.0.1",
           f"--dashboard-port={cfg.cluster.dashboard_port}",
           f"--dashboard-agent-listen-port={_free_port()}",
           f"--ray-client-server-port={_free_port()}", "--disable-usage-stats"]  # fmt: skip
    if cfg.cluster.num_cpus is not None:
        cmd.append(f"--num-cpus={cfg.cluster.num_cpus}")
    env = {**serve_env(cfg), **os.environ}
    env.update(_runtime_env().get("env_vars", {}))
    if cfg.cluster.token_auth:
        ensure_token()
        env["RAY_AUTH_MODE"] = "token"
    logger.info("starting a local Ray cluster: %s", " ".join(cmd))
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    address = own_cluster_address(cfg) if proc.returncode == 0 else None
    if address is None:
        raise QLPError(f"`ray start --head` failed: {(proc.stderr or proc.stdout).strip()[-800:]}")
    return address


def cluster_note(cfg: QLPConfig) -> list[str]:
    """What a user needs to reach qlp's own cluster from another shell (``ray job submit``,
    ``ray status``, the dashboard), when this process is connected to it; [] otherwise."""
    import ray

    own = own_cluster_address(cfg)
    if own is None or not ray.is_initialized() or ray.get_runtime_context().gcs_address != own:
        return []
    dashboard = f"http://127.0.0.1:{cfg.cluster.dashboard_port}"
    if not cfg.cluster.token_auth:
        return [f"Ray dashboard and Jobs API: {dashboard} (Ray token auth is off)"]
    return [
        f"Ray dashboard and Jobs API: {dashboard}; the cluster requires Ray's token "
        f"({token_path()}). In another shell, before `ray job submit`:",
        "export RAY_AUTH_MODE=token",
    ]


def ensure_ray(cfg: QLPConfig, *, persistent: bool) -> str:
    """Make sure this process is connected to Ray; returns how (``connected``/``reused``/
    ``started``/``local``/``already``)."""
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
    own = own_cluster_address(cfg)
    if own is not None:
        _init_own(own, runtime_env)
        return "reused"
    if persistent:
        _init_own(start_local_cluster(cfg), runtime_env)
        return "started"
    with cluster_env(cfg):
        ray.init(address="local", include_dashboard=False, runtime_env=runtime_env)
    return "local"


def connect_existing(cfg: QLPConfig) -> bool:
    """Connect to ``RAY_ADDRESS`` or qlp's own running cluster; False when there is none."""
    import ray

    if ray.is_initialized():
        return True
    address = os.environ.get("RAY_ADDRESS")
    if address:
        try:
            ray.init(address=address, runtime_env=_runtime_env() or None)
        except ConnectionError:
            return False
        return True
    own = own_cluster_address(cfg)
    if own is None:
        return False
    _init_own(own, _runtime_env() or None)
    return True


def stop_local_cluster(cfg: QLPConfig, grace_s: float = 15.0) -> bool:
    """Stop the cluster qlp started for this home (and nothing else on the machine): its
    processes get SIGTERM, then SIGKILL after ``grace_s``. False if none ran."""
    import psutil

    procs = _alive(_own_processes(cfg))
    if not procs:
        return False
    for p in procs:
        with contextlib.suppress(psutil.NoSuchProcess):
            p.terminate()
    _, left = psutil.wait_procs(procs, timeout=grace_s)
    for p in left:
        with contextlib.suppress(psutil.NoSuchProcess):
            p.kill()
    psutil.wait_procs(left, timeout=10)
    (own_cluster_dir(cfg) / "ray_current_cluster").unlink(missing_ok=True)
    deadline = time.monotonic() + 5
    while _alive(_own_processes(cfg)) and time.monotonic() < deadline:
        time.sleep(0.2)
    return True
