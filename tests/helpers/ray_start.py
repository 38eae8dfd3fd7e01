"""The one local Ray cluster of a test session, and Serve apps deployed on it.

Starting Ray costs 10-20 s on 2 busy cores, so every integration test shares one cluster
(the ``ray_session`` fixture in tests/conftest.py): a head with the dashboard (the Jobs
API), a Prometheus export port and :data:`SESSION_CPUS` logical CPUs. A test that needs
another topology adds worker nodes to it and removes them afterwards. Serve listens on one
HTTP port, :data:`SERVE_PORT`, for the whole session: a module deploys its app there and
deletes it when done (:func:`deployed`), so two modules' apps never share a route and the
Serve controller and proxy stay up. Never ``ray start`` / ``ray stop``.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# Logical CPUs, not cores: they only decide what Ray schedules. With 2 (the real count)
# a Serve app holding 1.5 of them starves a Ray Train run or a Tune trial of the next test
# (ASHA-stopped trials also keep their placement group a while), which then waits forever.
# 8 lets every app, trainer and job driver of the suite be scheduled at once; they share
# the 2 real cores as any processes do.
SESSION_CPUS = 8
OBJECT_STORE_BYTES = 1 << 30


def free_port(preferred: int | None = None) -> int:
    """``preferred`` when nothing listens there, else a port the OS picks."""
    with socket.socket() as s:
        if preferred is not None:
            try:
                s.bind(("127.0.0.1", preferred))
                return preferred
            except OSError:
                pass
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# Serve's HTTP port for the whole session (Serve keeps the port it was first started with).
# Any free port, never a fixed one: Serve's proxy binds with SO_REUSEPORT, so two sessions
# on one machine that chose the same port would share it and answer each other's requests.
SERVE_PORT = free_port()
SERVE_URL = f"http://127.0.0.1:{SERVE_PORT}"


@dataclass
class SessionRay:
    """The session's cluster (``ray.cluster_utils.Cluster``) and where its services listen."""

    cluster: Any
    temp_dir: str
    dashboard_url: str
    metrics_url: str

    @property
    def address(self) -> str:
        """GCS address, for ``RAY_ADDRESS`` of a subprocess."""
        return self.cluster.address

    def add_node(self, **node_args: Any) -> Any:
        """A worker node in the cluster's own temp dir, its processes started with the
        head's environment (Serve settings, ``RAY_ADDRESS``); remove it with
        ``cluster.remove_node``."""
        from qlp_ray.core.config import QLPConfig
        from qlp_ray.core.runtime import cluster_env

        with cluster_env(QLPConfig()), _environ(RAY_ADDRESS=self.address):
            return self.cluster.add_node(temp_dir=self.temp_dir, **node_args)

    def connect(self, namespace: str | None = None) -> None:
        """(Re)connect this process as the cluster's driver, in ``namespace`` if given.

        Only the driver reconnects; the cluster, its detached actors and Serve keep running.
        """
        import ray

        if ray.is_initialized():
            ray.shutdown()
        ray.init(address=self.cluster.address, namespace=namespace, log_to_driver=False)

    def shutdown(self) -> None:
        import ray

        ray.shutdown()
        with _machine_address_kept():
            self.cluster.shutdown()
        shutil.rmtree(self.temp_dir, ignore_errors=True)


@contextlib.contextmanager
def _machine_address_kept() -> Iterator[None]:
    """Leave /tmp/ray/ray_current_cluster (the machine's ``address="auto"``) as it was:
    ``Cluster`` writes its address there on start and deletes the file on shutdown, which
    would redirect or break other Ray users of this machine."""
    from ray._common.utils import get_ray_address_file

    path = Path(get_ray_address_file(None))
    before = path.read_text() if path.is_file() else None
    path.parent.mkdir(parents=True, exist_ok=True)  # a fresh machine has no /tmp/ray yet
    try:
        yield
    finally:
        if before is None:
            path.unlink(missing_ok=True)
        else:
            path.write_text(before)


def start_session_cluster() -> SessionRay:
    """Start the session's head node and connect to it.

    The cluster lives in its own temp dir, and its processes get ``RAY_ADDRESS``: Ray
    resolves ``address="auto"`` from ``<temp dir>/ray_current_cluster`` (the Jobs API does
    so for every job driver) or, without a temp dir, from the last cluster anybody started
    on this machine; Ray's own workers that call the state API with no address (Ray Train's
    placement-group cleaner) read ``RAY_ADDRESS``. Either, pointed at another engineer's
    cluster, sends a job there or removes a live Train run's placement group.

    A loaded 2-core machine can miss Ray's node start-up deadline; that one error is
    retried once. The Serve processes get the default config's ``serve_env`` (throughput
    mode), as under ``qlp serve``.
    """
    from ray._private.services import get_node_ip_address
    from ray._private.utils import write_ray_address
    from ray.cluster_utils import Cluster

    from qlp_ray.core.config import QLPConfig
    from qlp_ray.core.runtime import cluster_env

    for attempt in (1, 2):
        dashboard_port, metrics_port, gcs_port = free_port(), free_port(), free_port()
        address = f"{get_node_ip_address()}:{gcs_port}"
        temp_dir = tempfile.mkdtemp(prefix="qlpray_")  # short: Ray's socket paths live here
        cluster = Cluster()
        try:
            # the raylet, so every worker, inherits both
            with cluster_env(QLPConfig()), _environ(RAY_ADDRESS=address):
                with _machine_address_kept():
                    cluster.add_node(
                        temp_dir=temp_dir,
                        gcs_server_port=gcs_port,
                        num_cpus=SESSION_CPUS,
                        object_store_memory=OBJECT_STORE_BYTES,
                        include_dashboard=True,
                        dashboard_host="127.0.0.1",
                        dashboard_port=dashboard_port,
                        # a free port: the default 52365 may be taken by another Ray here
                        dashboard_agent_listen_port=free_port(),
                        metrics_export_port=metrics_port,
                    )
            assert cluster.address == address, (cluster.address, address)
            write_ray_address(address, temp_dir)  # what the Jobs API's "auto" finds
            session = SessionRay(
                cluster,
                temp_dir=temp_dir,
                dashboard_url=f"http://127.0.0.1:{dashboard_port}",
                metrics_url=f"http://127.0.0.1:{metrics_port}/metrics",
            )
            session.connect()
            return session
        except Exception as exc:  # ray raises a bare Exception for this timeout
            with _machine_address_kept():
                cluster.shutdown()
            shutil.rmtree(temp_dir, ignore_errors=True)
            if attempt == 2 or "timed out during startup" not in str(exc):
                raise
    raise AssertionError("unreachable")


@contextlib.contextmanager
def session_environ() -> Iterator[None]:
    """The session cluster runs without Ray's token auth, and so must every node added to it
    and every client in this process: ``RAY_AUTH_MODE=disabled`` explicitly. Left unset,
    Ray switches a process to token mode in ``os.environ`` the first time it starts or
    auto-finds a local cluster while ~/.ray/auth_token exists, and a node added after that
    inherits token mode and cannot talk to the head. Private heads (tests/helpers/
    private_ray.py) and ``qlp``'s own clusters get their tokens explicitly."""
    with _environ(RAY_AUTH_MODE="disabled"):
        yield


@contextlib.contextmanager
def _environ(**values: str) -> Iterator[None]:
    """``values`` in ``os.environ`` for the block, then as before."""
    before = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in before.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@contextlib.contextmanager
def deployed(cfg: Any) -> Iterator[str]:
    """``cfg``'s app deployed on the session's Serve as ``qlp serve`` runs it; its URL.

    Deleted afterwards (``serve.delete``), Serve itself stays up for the next module.
    ``cfg.serve.port`` must be :data:`SERVE_PORT`.
    """
    from ray import serve

    from qlp_ray.serve.app import deploy

    assert cfg.serve.port == SERVE_PORT, "one Serve port per session: use SERVE_PORT"
    try:
        yield deploy(cfg, persistent=False)
    finally:
        serve.delete(cfg.serve.app_name)


def served_app_fixture(build: Callable[[Path], tuple[Any, Any]], name: str) -> Any:
    """A module-scoped ``app`` fixture: ``build(tmp_dir) -> (cfg, registry)``, then the app
    deployed on the session's Serve (:func:`deployed`); yields ``{"cfg", "registry"}``."""
    import pytest

    @pytest.fixture(scope="module")
    def app(tmp_path_factory: Any, ray_session: SessionRay) -> Iterator[dict[str, Any]]:
        cfg, registry = build(tmp_path_factory.mktemp(name))
        with deployed(cfg) as url:
            assert url == SERVE_URL
            yield {"cfg": cfg, "registry": registry}

    return app
